using Lab.Swapstore;
using Lab.Vm;
using VmOwner = Lab.Vm.SwapOwnerKind;
using VmRead = Lab.Vm.SwapReadResult;

namespace Lab.Daemon;

/// <summary>
/// The VM's swap device on the SQLite swap store. Page-outs arrive one page at a time (the
/// VM's eviction of one page); they are gathered into a cluster that is committed in one
/// transaction when it is full or when the pageout calls <see cref="Flush"/> (before it
/// asks the process to drop the pages, so a page is never only in our memory when it
/// leaves the process for good... except for the moment between write and flush, during
/// which reads of those slots are served from the cluster buffer).
/// </summary>
public sealed class StoreSwapDevice : ISwapDevice, IDisposable
{
    public const int ClusterPages = 32;
    const int Page = SwapStore.PageBytes;

    readonly SwapStore _store;
    readonly object _gate = new();        // the filling cluster; held only for copies
    readonly object _flushGate = new();   // one flush at a time
    byte[] _fill = new byte[ClusterPages * Page], _flushing = new byte[ClusterPages * Page];
    long[] _fillSlots = new long[ClusterPages], _flushSlots = new long[ClusterPages];
    int _fillCount, _flushCount;
    readonly SlotWrite[] _writes = new SlotWrite[ClusterPages];
    // Slots freed while their cluster was being committed: freed once the commit is done.
    readonly List<long> _freeAfterFlush = new();

    public StoreSwapDevice(SwapStore store) { _store = store; }

    public SwapStore Store => _store;

    public long Write(VmOwner kind, long ownerId, long ownerIndex, ReadOnlySpan<byte> page)
    {
        var owner = kind == VmOwner.Anon ? SwapOwner.Anon(ownerId) : SwapOwner.Object(ownerId, ownerIndex);
        if (!_store.TryAllocate(owner, out long slot)) return 0;
        bool full;
        lock (_gate)
        {
            page[..Page].CopyTo(_fill.AsSpan(_fillCount * Page, Page));
            _fillSlots[_fillCount++] = slot;
            full = _fillCount == ClusterPages;
        }
        if (full) Flush();
        return slot;
    }

    public VmRead Read(long slot, Span<byte> dest)
    {
        lock (_gate)
        {
            for (int i = 0; i < _fillCount; i++)
                if (_fillSlots[i] == slot) { _fill.AsSpan(i * Page, Page).CopyTo(dest); return VmRead.Ok; }
            for (int i = 0; i < _flushCount; i++)
                if (_flushSlots[i] == slot) { _flushing.AsSpan(i * Page, Page).CopyTo(dest); return VmRead.Ok; }
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
            for (int i = 0; i < _fillCount; i++)
            {
                if (_fillSlots[i] != slot) continue;
                // Never written: take it out of the cluster (the last page moves into its place).
                int last = --_fillCount;
                if (i != last)
                {
                    _fillSlots[i] = _fillSlots[last];
                    _fill.AsSpan(last * Page, Page).CopyTo(_fill.AsSpan(i * Page, Page));
                }
                _store.Free(slot);
                return;
            }
            for (int i = 0; i < _flushCount; i++)
                if (_flushSlots[i] == slot) { _freeAfterFlush.Add(slot); return; }
        }
        _store.Free(slot);
    }

    /// <summary>Commit the pages written so far (one transaction).</summary>
    public void Flush()
    {
        lock (_flushGate)
        {
            lock (_gate)
            {
                if (_fillCount == 0) return;
                (_fill, _flushing) = (_flushing, _fill);
                (_fillSlots, _flushSlots) = (_flushSlots, _fillSlots);
                _flushCount = _fillCount;
                _fillCount = 0;
            }
            for (int i = 0; i < _flushCount; i++)
                _writes[i] = new SlotWrite(_flushSlots[i], _flushing.AsMemory(i * Page, Page));
            try { _store.WriteCluster(_writes.AsSpan(0, _flushCount)); }
            finally
            {
                long[] frees;
                lock (_gate)
                {
                    _flushCount = 0;
                    frees = _freeAfterFlush.Count == 0 ? [] : [.. _freeAfterFlush];
                    _freeAfterFlush.Clear();
                }
                foreach (long s in frees) _store.Free(s);
            }
        }
    }

    public void Dispose()
    {
        try { Flush(); } catch (Exception e) when (e is SwapStoreException or ObjectDisposedException) { }
        _store.Dispose();
    }
}
