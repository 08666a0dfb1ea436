using Lab.Swapstore;
using Lab.Vm;
using VmOwner = Lab.Vm.SwapOwnerKind;
using VmRead = Lab.Vm.SwapReadResult;

namespace Lab.Daemon;

/// <summary>
/// The VM's swap device on the SQLite swap store. Page-outs arrive one page at a time (the
/// VM's eviction of one page, under that space's map lock); they wait in memory until the
/// pageout calls <see cref="Flush"/> after its scan (no map lock held), which commits them
/// in clusters of <see cref="ClusterPages"/>, one transaction each, before the pages leave
/// the process. Until then reads of those slots are served from memory. A commit that fails
/// keeps its pages here (tried again at the next flush); with the buffer full, Write says
/// the device is full, so the pageout takes only clean pages meanwhile.
/// A freed slot is free in the file at once: the store batches the row deletes of frees
/// into its next write, which may never come (a store whose programs all ended), so
/// `lab swap inspect` showed the slots of dead objects as used. A committer thread,
/// woken by each free, commits them (frees come from the VM under its locks, so never
/// there), a burst of frees in one transaction.
/// </summary>
public sealed class StoreSwapDevice : ISwapDevice, IDisposable
{
    public const int ClusterPages = 32;
    /// <summary>Room for a whole pageout batch and a cluster more.</summary>
    public const int BufferPages = PageoutDaemon.Batch + ClusterPages;
    const int Page = SwapStore.PageBytes;

    readonly SwapStore _store;
    readonly object _gate = new();        // the buffer; held only for copies, never across SQLite
    readonly object _flushGate = new();   // one flush at a time
    readonly byte[] _buf = new byte[BufferPages * Page];
    // Slot of each waiting page; negative: freed while waiting (freed in the store after the flush).
    readonly long[] _slots = new long[BufferPages];
    int _count;
    readonly SlotWrite[] _writes = new SlotWrite[ClusterPages];
    readonly long[] _toFree = new long[BufferPages];

    readonly Thread _committer;
    readonly AutoResetEvent _freed = new(false);
    volatile bool _stopping;

    public StoreSwapDevice(SwapStore store)
    {
        _store = store;
        _committer = new Thread(CommitFrees) { IsBackground = true, Name = "swap-frees" };
        _committer.Start();
    }

    void CommitFrees()
    {
        while (true)
        {
            _freed.WaitOne();
            if (_stopping) return;
            try { _store.Flush(); }
            catch (Exception e) when (e is SwapStoreException or InvalidOperationException or IOException)
            {
                // The rows stay until the next write or flush commits them; the slots are free in memory.
                Log.Error($"swap store: freed slots could not be committed ({e.Message}); the next write retries");
            }
        }
    }

    public SwapStore Store => _store;

    public long Write(VmOwner kind, long ownerId, long ownerIndex, ReadOnlySpan<byte> page)
    {
        lock (_gate) if (_count == BufferPages) return 0;
        var owner = kind == VmOwner.Anon ? SwapOwner.Anon(ownerId) : SwapOwner.Object(ownerId, ownerIndex);
        if (!_store.TryAllocate(owner, out long slot)) return 0;
        lock (_gate)
        {
            if (_count == BufferPages) { _store.Free(slot); return 0; }
            page[..Page].CopyTo(_buf.AsSpan(_count * Page, Page));
            _slots[_count++] = slot;
        }
        return slot;
    }

    public VmRead Read(long slot, Span<byte> dest)
    {
        lock (_gate)
        {
            for (int i = 0; i < _count; i++)
                if (_slots[i] == slot) { _buf.AsSpan(i * Page, Page).CopyTo(dest); return VmRead.Ok; }
        }
        return _store.Read(slot, dest) switch
        {
            Lab.Swapstore.SwapReadResult.Ok => VmRead.Ok,
            Lab.Swapstore.SwapReadResult.Corrupt => VmRead.Corrupt,
            _ => VmRead.Missing,
        };
    }

    public void Free(long slot)
    {
        lock (_gate)
        {
            for (int i = 0; i < _count; i++)
                if (_slots[i] == slot) { _slots[i] = -slot; return; }   // the flush frees it
        }
        _store.Free(slot);
        _freed.Set();
    }

    /// <summary>Commit the pages written so far, a cluster per transaction. False if a commit failed (its pages wait for the next flush).</summary>
    public bool Flush()
    {
        lock (_flushGate)
        {
            int n;
            lock (_gate) n = _count;
            if (n == 0) return true;
            // Entries [0, n) stay where they are until committed: only this thread moves them.
            int committed = 0;
            bool ok = true;
            while (committed < n)
            {
                int end = Math.Min(n, committed + ClusterPages), w = 0;
                lock (_gate)
                    for (int i = committed; i < end; i++)
                        if (_slots[i] > 0) _writes[w++] = new SlotWrite(_slots[i], _buf.AsMemory(i * Page, Page));
                try { _store.WriteCluster(_writes.AsSpan(0, w)); }
                catch (Exception e) when (e is SwapStoreException or InvalidOperationException or IOException)
                {
                    Log.Error($"swap store: a pageout cluster could not be committed ({e.Message}); its pages stay in memory");
                    ok = false;
                    break;
                }
                committed = end;
            }
            // Drop the committed entries; collect the slots freed while they waited.
            int frees = 0;
            lock (_gate)
            {
                for (int i = 0; i < committed; i++)
                    if (_slots[i] < 0) _toFree[frees++] = -_slots[i];
                int rest = _count - committed;
                if (rest > 0 && committed > 0)
                {
                    _buf.AsSpan(committed * Page, rest * Page).CopyTo(_buf);
                    Array.Copy(_slots, committed, _slots, 0, rest);
                }
                _count = rest;
            }
            for (int i = 0; i < frees; i++) _store.Free(_toFree[i]);
            if (frees > 0) _freed.Set();
            return ok;
        }
    }

    public void Dispose()
    {
        _stopping = true;
        _freed.Set();
        _committer.Join();
        try { Flush(); } catch (ObjectDisposedException) { }
        _store.Dispose();
        _freed.Dispose();
    }
}
