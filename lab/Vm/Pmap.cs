namespace Lab.Vm;

/// <summary>
/// The machine-dependent half of one address space (the BSD pmap). The daemon's
/// implementation drives userfaultfd on a real process; the tests' implementation
/// is a simulated page table. The resolvers only ever talk to this.
/// </summary>
public interface IPmap
{
    /// <summary>Page size in bytes (4096).</summary>
    int PageSize { get; }

    /// <summary>
    /// A staging buffer of at least <paramref name="pages"/> pages. The resolver fills it
    /// (from a pager, or with zeros) and then calls <see cref="EnterCopy"/>. Reused across
    /// faults: valid only until the next call on this pmap.
    /// </summary>
    Span<byte> Staging(int pages);

    /// <summary>
    /// Install <paramref name="pages"/> pages at <paramref name="va"/> with the bytes in the
    /// staging buffer (a private copy in the address space). Not writable means installed
    /// write-protected: the next write raises a write-protect fault. Returns false when the
    /// range is already present or gone (the fault is then superseded, not an error).
    /// </summary>
    bool EnterCopy(ulong va, int pages, bool writable);

    /// <summary>Install a zero page at <paramref name="va"/>.</summary>
    bool EnterZero(ulong va, bool writable);

    /// <summary>
    /// Map page <paramref name="pindex"/> of a shared vnode object at <paramref name="va"/>
    /// (a MAP_SHARED lab mapping: the address space maps the object's page cache itself,
    /// so every mapper sees one page). The pager has made the page valid before this call.
    /// </summary>
    bool EnterShared(ulong va, IVnode vnode, long pindex, bool writable);

    /// <summary>Set or clear write protection on resident pages of [va, va+length).</summary>
    void Protect(ulong va, ulong length, bool writeProtect);

    /// <summary>
    /// Write-protect resident pages of [va, va+length) if that can be done now, without
    /// waiting on anything: false when it could not (the pageout then leaves the page for
    /// a later scan). The pageout calls it with a map lock held, so it must never wait for
    /// a thread that may need that lock.
    /// </summary>
    bool TryWriteProtect(ulong va, ulong length)
    {
        Protect(va, length, true);
        return true;
    }

    /// <summary>Make every access to the page at <paramref name="va"/> raise SIGBUS.</summary>
    void Poison(ulong va);

    /// <summary>Wake threads waiting on [va, va+length) without installing anything.</summary>
    void Wake(ulong va, ulong length);

    /// <summary>
    /// Copy the bytes of the page installed at <paramref name="va"/> into
    /// <paramref name="dest"/> (one page). False when they cannot be read (not present,
    /// the process is gone): the page-out then does not happen.
    /// </summary>
    bool ReadPage(ulong va, Span<byte> dest);

    /// <summary>
    /// Take <paramref name="pages"/> pages at <paramref name="va"/> out of the address space
    /// (the page-out's unmap). May complete later; until <see cref="AddressSpace.CompleteEvict"/>
    /// faults on those pages get <see cref="FaultResult.Retry"/>.
    /// </summary>
    void Remove(ulong va, int pages);
}
