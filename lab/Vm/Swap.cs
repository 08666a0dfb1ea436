namespace Lab.Vm;

/// <summary>Who a swap slot belongs to, so the store can show and check its rows.</summary>
public enum SwapOwnerKind
{
    /// <summary>A page of an anonymous (shadow) object: owner id = object id, owner index = pindex (FreeBSD, DragonFly).</summary>
    Object,
    /// <summary>A UVM anon: owner id = the anon's id, owner index 0.</summary>
    Anon,
}

/// <summary>How a swap read ended.</summary>
public enum SwapReadResult
{
    Ok,
    /// <summary>No such slot (a bug or a lost row): the page is poisoned, never zero-filled.</summary>
    Missing,
    /// <summary>The stored bytes fail their check. The device marks the slot bad and never hands it out again.</summary>
    Corrupt,
}

/// <summary>
/// The swap store (the swap pager's backing): one page per slot. The daemon's will be
/// SQLite; the tests keep pages in memory. Called with the faulting or evicting space's
/// map lock held, so an implementation must not call back into the VM.
/// </summary>
public interface ISwapDevice
{
    /// <summary>Store one page; returns its slot (&gt; 0), or 0 when the device is full.</summary>
    long Write(SwapOwnerKind kind, long ownerId, long ownerIndex, ReadOnlySpan<byte> page);

    /// <summary>Read the page in <paramref name="slot"/> into <paramref name="dest"/> (one page).</summary>
    SwapReadResult Read(long slot, Span<byte> dest);

    /// <summary>The slot's page is no longer needed.</summary>
    void Free(long slot);
}

/// <summary>How <see cref="AddressSpace.Evict"/> ended.</summary>
public enum EvictResult
{
    /// <summary>The page's bytes were written to a new swap slot and the page left the space.</summary>
    Evicted,
    /// <summary>The page left the space without I/O: it equals the file or zero, a shared file page, or its swap copy is current.</summary>
    Clean,
    /// <summary>No page installed at that address (or no entry).</summary>
    NotResident,
    /// <summary>The entry is wired (mlock).</summary>
    Wired,
    /// <summary>A dirty anonymous page and no swap device, or the device is full. Nothing changed.</summary>
    NoSwap,
    /// <summary>A fault or another eviction holds the page, or its bytes could not be read: try later.</summary>
    Busy,
}
