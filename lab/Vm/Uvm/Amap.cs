namespace Lab.Vm.Uvm;

/// <summary>
/// An anon (struct vm_anon): one page of anonymous memory, shared copy-on-write by
/// the amap slots that point at it (<see cref="an_ref"/>). The lab keeps no bytes: an
/// anon's page is <see cref="PageContent.InSpaces"/> (in the spaces that have it
/// installed) or <see cref="PageContent.Zero"/> (zero-filled, never writable yet).
/// Guarded by the lock of the amaps that hold it (<see cref="Amap.am_lock"/>).
/// </summary>
internal sealed class Anon
{
#pragma warning disable IDE1006 // BSD names on purpose
    public int an_ref;
    /// <summary>
    /// The swap slot holding a copy of the page (0: none): current while the content is
    /// <see cref="PageContent.Swap"/>, stale once the page was written (the next page-out
    /// replaces it). Wiring drops it. An int, as in UVM, so an anon stays 32 bytes; the
    /// device's slots beyond int range are refused.
    /// </summary>
    public int an_swslot;
    /// <summary>The anon's name for the swap store, given at its first page-out (0: never paged out).</summary>
    public int an_id;
#pragma warning restore IDE1006
    public PageContent Content;
}

/// <summary>
/// An amap (struct vm_amap): the upper layer of a UVM map entry, one slot per page,
/// each empty or pointing at an anon. <see cref="am_ref"/> counts the entries that
/// use the amap; <see cref="am_ppref"/> counts them per slot (UVM_AMAP_PPREF), so an
/// unmap of part of a split entry frees exactly the anons nobody else can reach.
/// </summary>
internal sealed class Amap
{
    /// <summary>UVM_AMAP_LARGE: entries at least this many pages are chunked by amap_copy.</summary>
    internal const int Large = 256;
    /// <summary>UVM_AMAP_CHUNK: pages in one chunk.</summary>
    internal const int Chunk = 16;

#pragma warning disable IDE1006 // BSD names on purpose
    /// <summary>
    /// The lock for the slots, the references and the anons. An amap made by copying
    /// another shares its lock (as 2019's an_lock == am_lock), so one lock covers every
    /// amap an anon can be in.
    /// </summary>
    public readonly object am_lock;
    public readonly Anon?[] am_anon;
    public readonly int[] am_ppref;
    public int am_ref;
    public int am_nused;
#pragma warning restore IDE1006

    public Amap(int slots, object? sharedLock)
    {
        am_lock = sharedLock ?? new object();
        am_anon = new Anon?[slots];
        am_ppref = new int[slots];
    }

    public int Slots => am_anon.Length;

    /// <summary>Debug builds: the contract "caller holds am_lock" is checked.</summary>
    [System.Diagnostics.Conditional("DEBUG")]
    void AssertLocked() => System.Diagnostics.Debug.Assert(Monitor.IsEntered(am_lock), "caller holds am_lock");

    /// <summary>amap_ref: one more entry uses slots [slot, slot+n). Caller holds am_lock.</summary>
    public void Ref(int slot, int n)
    {
        AssertLocked();
        am_ref++;
        for (int i = slot; i < slot + n; i++) am_ppref[i]++;
    }

    /// <summary>
    /// amap_unref: an entry using slots [slot, slot+n) lets go. Anons in slots nobody
    /// uses any more lose that reference. Caller holds am_lock.
    /// </summary>
    public void Unref(int slot, int n, AddressSpace space)
    {
        AssertLocked();
        am_ref--;
        for (int i = slot; i < slot + n; i++)
        {
            if (--am_ppref[i] > 0) continue;
            var anon = am_anon[i];
            if (anon == null) continue;
            am_anon[i] = null;
            am_nused--;
            space.AnonUnref(anon);
        }
    }

    /// <summary>amap_add: put <paramref name="anon"/> in a slot (replacing: anon COW). Caller holds am_lock.</summary>
    public void Add(int slot, Anon anon, bool replace)
    {
        AssertLocked();
        if (!replace) am_nused++;
        am_anon[slot] = anon;
    }

    /// <summary>Whether any slot in [slot, slot+n) holds an anon. Caller holds am_lock.</summary>
    public bool Any(int slot, int n)
    {
        AssertLocked();
        for (int i = slot; i < slot + n; i++) if (am_anon[i] != null) return true;
        return false;
    }
}
