using System.Runtime.InteropServices;
using SQLitePCL;

namespace Lab.Swapstore;

public sealed partial class SwapStore
{
    // ---- writes ----------------------------------------------------------------------------------

    /// <summary>
    /// Writes a pageout cluster (typically 16 or 32 pages) in ONE transaction: all of it is
    /// committed or none of it. Each slot must be reserved (it becomes used, with the owner given
    /// at allocation) or used (its page is replaced, the owner kept). Each page is exactly 4096 bytes.
    /// </summary>
    public void WriteCluster(ReadOnlySpan<SlotWrite> writes)
    {
        ThrowIfDisposed();
        if (writes.IsEmpty) return;
        lock (_writeLock)
        {
            if (_ownerScratch.Length < writes.Length) _ownerScratch = new SwapOwner[writes.Length];
            lock (_stateLock)
            {
                for (int i = 0; i < writes.Length; i++)
                {
                    long slot = writes[i].Slot;
                    switch (StateOf(slot))
                    {
                        case SwapSlotState.Reserved: _ownerScratch[i] = _reserved[slot]; break;
                        case SwapSlotState.Used: _ownerScratch[i] = default; break;
                        case SwapSlotState.Bad: throw new InvalidOperationException($"slot {slot} is bad and cannot be written");
                        default: throw new InvalidOperationException($"slot {slot} is not allocated");
                    }
                }
            }

            BeginWrite();
            int deleted;
            try
            {
                deleted = DeletePendingInTransaction();
                for (int i = 0; i < writes.Length; i++)
                {
                    ReadOnlySpan<byte> page = writes[i].Page.Span;
                    if (page.Length != PageBytes)
                        throw new ArgumentException($"slot {writes[i].Slot}: a page is {PageBytes} bytes, got {page.Length}", nameof(writes));
                    long slot = writes[i].Slot;
                    ref readonly SwapOwner owner = ref _ownerScratch[i];
                    raw.sqlite3_bind_int64(_upsert, 1, slot);
                    raw.sqlite3_bind_int64(_upsert, 2, (long)owner.Kind);
                    raw.sqlite3_bind_int64(_upsert, 3, owner.Id);
                    raw.sqlite3_bind_int64(_upsert, 4, owner.Index);
                    raw.sqlite3_bind_int64(_upsert, 5, Crc32C.SlotChecksum(slot, page));
                    raw.sqlite3_bind_blob(_upsert, 6, page);
                    Sql.Exec(_upsert, "write slot");
                    AfterClusterRow?.Invoke(i);
                }
                Sql.Exec(_commit, "commit");
            }
            catch
            {
                RollbackQuietly();
                throw;
            }
            CommitDone(writes.Length + deleted);
            Interlocked.Add(ref Counters.PagesWritten, writes.Length);

            lock (_stateLock)
            {
                _pendingDeletes.RemoveRange(0, deleted);
                for (int i = 0; i < writes.Length; i++)
                {
                    long slot = writes[i].Slot;
                    if (StateOf(slot) != SwapSlotState.Reserved) continue; // a rewrite, or freed meanwhile
                    _state[slot] = (byte)SwapSlotState.Used;
                    _reserved.Remove(slot);
                    Counters.SlotsReserved--;
                    Counters.SlotsUsed++;
                }
            }
        }
    }

    /// <summary>Writes one page in its own transaction (a cluster of one).</summary>
    public void Write(long slot, ReadOnlyMemory<byte> page)
    {
        Span<SlotWrite> one = [new SlotWrite(slot, page)];
        WriteCluster(one);
    }

    /// <summary>Deletes the rows of freed slots inside the open write transaction; returns how many it took.</summary>
    int DeletePendingInTransaction()
    {
        int n;
        lock (_stateLock)
        {
            n = _pendingDeletes.Count;
            if (n == 0) return 0;
            if (_deleteScratch.Length < n) _deleteScratch = new long[Math.Max(n, _deleteScratch.Length * 2)];
            CollectionsMarshal.AsSpan(_pendingDeletes).CopyTo(_deleteScratch);
        }
        for (int i = 0; i < n; i++)
        {
            raw.sqlite3_bind_int64(_delete, 1, _deleteScratch[i]);
            Sql.Exec(_delete, "free slot");
        }
        return n;
    }

    /// <summary>Starts a write transaction (under _writeLock).</summary>
    void BeginWrite()
    {
        // A reader snapshot taken during the last checkpoint would stop the WAL from restarting.
        EndReaderSnapshot();
        Sql.Exec(_begin, "begin");
    }

    /// <summary>After COMMIT (under _writeLock): make the commit visible to reads, checkpoint when due.</summary>
    void CommitDone(int rows)
    {
        Interlocked.Increment(ref Counters.Transactions);
        EndReaderSnapshot();
        int every = _options.WalAutoCheckpoint;
        if (every <= 0) return;
        _pagesSinceCheckpoint += rows;
        _walPages += rows;
        if (_walPages >= Math.Max(every, _options.MaxWalPages))
            CheckpointLocked(); // the background one is not keeping up, or there is none
        else if (_pagesSinceCheckpoint >= every)
        {
            _pagesSinceCheckpoint = 0;
            if (_ckptThread != null) _ckptWake.Set(); else CheckpointLocked();
        }
    }

    /// <summary>A checkpoint by the writer (under _writeLock): no commit can land meanwhile, so it copies everything.</summary>
    void CheckpointLocked()
    {
        lock (_ckptLock)
        {
            _pagesSinceCheckpoint = 0;
            EndReaderSnapshot();
            // PASSIVE never waits; readers that start meanwhile see the newest commit, which is all
            // there is, so it copies every frame, and the next BEGIN finds the WAL fully copied and
            // restarts it from the top.
            int rc = raw.sqlite3_wal_checkpoint_v2(_wdb, "main", raw.SQLITE_CHECKPOINT_PASSIVE, out int log, out int done);
            if (rc == raw.SQLITE_OK && log == done) _walPages = 0;
            Interlocked.Increment(ref Counters.Checkpoints);
        }
    }

    void CheckpointLoop()
    {
        var db = _ckptConn!.Handle!;
        while (true)
        {
            _ckptWake.WaitOne();
            if (_stopping) return;
            lock (_ckptLock)
            {
                EndReaderSnapshot();
                raw.sqlite3_wal_checkpoint_v2(db, "main", raw.SQLITE_CHECKPOINT_PASSIVE, out _, out _);
                Interlocked.Increment(ref Counters.Checkpoints);
            }
        }
    }

    void EndReaderSnapshot()
    {
        lock (_readLock)
        {
            if (!_readerInTxn) return;
            raw.sqlite3_step(_readEnd);
            raw.sqlite3_reset(_readEnd);
            _readerInTxn = false;
        }
    }

    void RollbackQuietly()
    {
        raw.sqlite3_reset(_upsert);
        // If SQLite already rolled back (some errors do), ROLLBACK fails harmlessly.
        raw.sqlite3_step(_rollback);
        raw.sqlite3_reset(_rollback);
        Interlocked.Increment(ref Counters.Rollbacks);
    }

    // ---- frees -----------------------------------------------------------------------------------

    /// <summary>
    /// Frees a slot: reserved → free at once; used → free at once in memory (a later Read returns
    /// Missing, Allocate may hand it out again), its row deleted by the next write transaction or
    /// <see cref="Flush"/>; bad → stays bad (never reused). Freeing a free slot is a caller bug and throws.
    /// </summary>
    public void Free(long slot)
    {
        ThrowIfDisposed();
        bool flush;
        lock (_stateLock)
        {
            FreeLocked(slot);
            flush = _pendingDeletes.Count >= _options.MaxPendingFrees;
        }
        if (flush) Flush();
    }

    /// <summary>Frees several slots (see <see cref="Free"/>); the row deletes are committed in one transaction.</summary>
    public void FreeMany(ReadOnlySpan<long> slots)
    {
        ThrowIfDisposed();
        bool flush;
        lock (_stateLock)
        {
            // Check first so that a bad argument frees nothing.
            foreach (long s in slots)
                if (StateOf(s) == SwapSlotState.Free) throw new InvalidOperationException($"slot {s} is not allocated");
            foreach (long s in slots) FreeLocked(s);
            flush = _pendingDeletes.Count >= _options.MaxPendingFrees;
        }
        if (flush || slots.Length > 1) Flush();
    }

    void FreeLocked(long slot)
    {
        switch (StateOf(slot))
        {
            case SwapSlotState.Reserved:
                _reserved.Remove(slot);
                Counters.SlotsReserved--;
                break;
            case SwapSlotState.Used:
                _pendingDeletes.Add(slot);
                Counters.SlotsUsed--;
                break;
            case SwapSlotState.Bad:
                return;
            default:
                throw new InvalidOperationException($"slot {slot} is not allocated");
        }
        _state[slot] = (byte)SwapSlotState.Free;
        _free.Push(slot);
        Counters.SlotsFreed++;
    }

    /// <summary>Commits the row deletes of freed slots (Dispose does it too).</summary>
    public void Flush()
    {
        ThrowIfDisposed();
        lock (_writeLock)
        {
            lock (_stateLock) if (_pendingDeletes.Count == 0) return;
            BeginWrite();
            int deleted;
            try
            {
                deleted = DeletePendingInTransaction();
                Sql.Exec(_commit, "commit");
            }
            catch
            {
                RollbackQuietly();
                throw;
            }
            CommitDone(deleted);
            lock (_stateLock) _pendingDeletes.RemoveRange(0, deleted);
        }
    }

    /// <summary>
    /// Gives a slot to another owner (the page moved between objects: FreeBSD's swap_pager_copy
    /// on collapse or the COW move optimisation). A used slot's row is updated in its own transaction.
    /// </summary>
    public void Reassign(long slot, SwapOwner owner)
    {
        ThrowIfDisposed();
        lock (_writeLock)
        {
            lock (_stateLock)
            {
                switch (StateOf(slot))
                {
                    case SwapSlotState.Reserved: _reserved[slot] = owner; return;
                    case SwapSlotState.Used: break;
                    default: throw new InvalidOperationException($"slot {slot} is {StateOf(slot)}, cannot be reassigned");
                }
            }
            BeginWrite();
            try
            {
                raw.sqlite3_bind_int64(_reassign, 1, slot);
                raw.sqlite3_bind_int64(_reassign, 2, (long)owner.Kind);
                raw.sqlite3_bind_int64(_reassign, 3, owner.Id);
                raw.sqlite3_bind_int64(_reassign, 4, owner.Index);
                Sql.Exec(_reassign, "reassign slot");
                Sql.Exec(_commit, "commit");
            }
            catch
            {
                RollbackQuietly();
                throw;
            }
            CommitDone(1);
        }
    }
}
