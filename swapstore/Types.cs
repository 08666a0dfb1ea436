namespace Lab.Swapstore;

/// <summary>What kind of owner holds a swap slot. Values are stored in <c>slots.owner_kind</c>.</summary>
public enum SwapOwnerKind : byte
{
    /// <summary>A VM object page (FreeBSD, DragonFly): owner_id = object id, owner_index = pindex.</summary>
    Object = 1,
    /// <summary>A UVM anon: owner_id = anon id, owner_index = 0.</summary>
    Anon = 2,
}

/// <summary>Who owns a slot: (object id, pindex) for the BSD designs, (anon id) for UVM.</summary>
public readonly record struct SwapOwner(SwapOwnerKind Kind, long Id, long Index)
{
    public static SwapOwner Object(long objectId, long pindex) => new(SwapOwnerKind.Object, objectId, pindex);
    public static SwapOwner Anon(long anonId) => new(SwapOwnerKind.Anon, anonId, 0);

    public override string ToString() =>
        Kind == SwapOwnerKind.Anon ? $"anon {Id}" : $"object {Id} pindex {Index}";
}

/// <summary>
/// One page of a pageout cluster: a slot from <see cref="SwapStore.Allocate"/> (or one already
/// written, to overwrite it) and its 4096 bytes. Memory, not a span, so that a cluster can be a
/// span of these; slice a pooled buffer to avoid allocating per page.
/// </summary>
public readonly record struct SlotWrite(long Slot, ReadOnlyMemory<byte> Page);

/// <summary>The outcome of <see cref="SwapStore.Read"/>.</summary>
public enum SwapReadResult
{
    /// <summary>The page was copied to the destination and its checksum matched.</summary>
    Ok,
    /// <summary>The slot holds no page (never written, or freed). The destination is untouched.</summary>
    Missing,
    /// <summary>
    /// The stored bytes fail their checksum (or the slot was found bad earlier). The slot is now
    /// marked bad and will never be allocated again; the caller fails that page only (SIGBUS).
    /// </summary>
    Corrupt,
}

/// <summary>A swap-store failure the caller should report in one line (open, format, I/O).</summary>
public sealed class SwapStoreException : Exception
{
    public SwapStoreException(string message) : base(message) { }
    public SwapStoreException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>
/// Counters, as plain fields (updated with Interlocked; read them with Volatile.Read or
/// Interlocked.Read if another thread is writing).
/// </summary>
public sealed class SwapCounters
{
    /// <summary>Slots holding a written page.</summary>
    public long SlotsUsed;
    /// <summary>Slots handed out by Allocate and not yet written or freed.</summary>
    public long SlotsReserved;
    /// <summary>Slots marked bad (checksum failure); never reused.</summary>
    public long BadSlots;
    public long PagesWritten;
    public long PagesRead;
    /// <summary>Reads of a slot that held no page.</summary>
    public long ReadsMissing;
    /// <summary>Reads that returned Corrupt (first detection and later reads of a bad slot).</summary>
    public long ReadsCorrupt;
    public long SlotsFreed;
    /// <summary>Write transactions committed (one per WriteCluster, flush, bad-slot mark...).</summary>
    public long Transactions;
    /// <summary>WAL checkpoints run.</summary>
    public long Checkpoints;
    /// <summary>Write transactions rolled back after a failure.</summary>
    public long Rollbacks;
}

/// <summary>Tuning knobs; the defaults are what the benchmark chose (swapstore/README.md).</summary>
public sealed record SwapStoreOptions
{
    /// <summary>
    /// SQLite page size, applied only when the file is created. 32 KiB holds seven 4 KiB rows per
    /// B-tree page (file ~1.15x the page bytes): no overflow pages, so a read is served from the
    /// memory map without a system call (SQLite reads overflow pages with pread), and a 16-page
    /// cluster is ~4 WAL frames. 4 KiB pages measured ~0.1x raw slower on both paths (README).
    /// </summary>
    public int PageSize { get; init; } = 32768;
    /// <summary>
    /// PRAGMA synchronous. NORMAL in WAL mode: a committed transaction survives the process being
    /// killed (it is in the OS page cache), fsync only at checkpoints; only a machine crash can lose
    /// the last transactions, and swap contents do not outlive the machine's processes anyway.
    /// </summary>
    public string Synchronous { get; init; } = "NORMAL";
    /// <summary>PRAGMA mmap_size for both connections (bytes); reads of checkpointed pages then copy from the mapping.</summary>
    public long MmapSize { get; init; } = 1L << 30;
    /// <summary>
    /// Checkpoint (copy the WAL into the main file) after this many rows written or deleted; the
    /// store does it itself after a commit, in place of SQLite's wal_autocheckpoint. 0: never (tests).
    /// </summary>
    public int WalAutoCheckpoint { get; init; } = 1000;
    /// <summary>Run checkpoints on a background thread (a third connection) instead of in the writer.</summary>
    public bool BackgroundCheckpoint { get; init; } = true;
    /// <summary>Pages written since the WAL last restarted beyond which the writer checkpoints itself (backpressure).</summary>
    public int MaxWalPages { get; init; } = 4000;
    /// <summary>PRAGMA cache_size in KiB per connection.</summary>
    public int CacheKiB { get; init; } = 16 * 1024;
    /// <summary>Upper bound on slots (0 = none): the "swap quota"; Allocate fails beyond it.</summary>
    public long MaxSlots { get; init; }
    /// <summary>Frees are batched and their row deletes committed with the next write; past this many pending, Free commits them itself.</summary>
    public int MaxPendingFrees { get; init; } = 1024;
    /// <summary>Drop every page (not the bad-slot list) at open: a daemon starting afresh.</summary>
    public bool ClearOnOpen { get; init; }
}
