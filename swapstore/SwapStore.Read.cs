using SQLitePCL;

namespace Lab.Swapstore;

public sealed partial class SwapStore
{
    // ---- reads -----------------------------------------------------------------------------------

    /// <summary>
    /// Reads slot <paramref name="slot"/> into <paramref name="dest"/> (at least 4096 bytes) and
    /// verifies its checksum. Missing: no page in that slot. Corrupt: the bytes fail the checksum,
    /// or the slot was found bad before; the slot is marked bad (in the file too) and never reused.
    /// Throws <see cref="SwapStoreException"/> only for errors that are not about this page's bytes.
    /// </summary>
    public SwapReadResult Read(long slot, Span<byte> dest)
    {
        ThrowIfDisposed();
        if (dest.Length < PageBytes) throw new ArgumentException($"destination must hold {PageBytes} bytes", nameof(dest));
        SwapSlotState st;
        lock (_stateLock) st = StateOf(slot);
        if (st == SwapSlotState.Bad)
        {
            Interlocked.Increment(ref Counters.ReadsCorrupt);
            return SwapReadResult.Corrupt;
        }
        if (st != SwapSlotState.Used)
        {
            Interlocked.Increment(ref Counters.ReadsMissing);
            return SwapReadResult.Missing;
        }

        SwapOwner owner;
        long stored;
        uint actual;
        string reason;
        lock (_readLock)
        {
            if (!_readerInTxn)
            {
                Sql.Exec(_readBegin, "begin read");
                _readerInTxn = true;
            }
            raw.sqlite3_bind_int64(_select, 1, slot);
            int rc = raw.sqlite3_step(_select);
            if (rc == raw.SQLITE_ROW)
            {
                stored = raw.sqlite3_column_int64(_select, 0);
                ReadOnlySpan<byte> blob = raw.sqlite3_column_blob(_select, 1);
                actual = blob.Length == PageBytes ? Crc32C.SlotChecksum(slot, blob) : 0;
                if (blob.Length == PageBytes && actual == stored)
                {
                    blob.CopyTo(dest);
                    raw.sqlite3_reset(_select);
                    Interlocked.Increment(ref Counters.PagesRead);
                    return SwapReadResult.Ok;
                }
                reason = blob.Length == PageBytes ? "checksum mismatch" : $"page is {blob.Length} bytes";
                owner = new SwapOwner((SwapOwnerKind)raw.sqlite3_column_int64(_select, 2),
                    raw.sqlite3_column_int64(_select, 3), raw.sqlite3_column_int64(_select, 4));
                raw.sqlite3_reset(_select);
            }
            else if (rc == raw.SQLITE_DONE)
            {
                // Freed by another thread since the state check.
                raw.sqlite3_reset(_select);
                Interlocked.Increment(ref Counters.ReadsMissing);
                return SwapReadResult.Missing;
            }
            else
            {
                raw.sqlite3_reset(_select);
                // Start the next read afresh after any error.
                raw.sqlite3_step(_readEnd);
                raw.sqlite3_reset(_readEnd);
                _readerInTxn = false;
                // SQLite itself found this row's pages damaged: the same verdict as a bad checksum.
                if ((rc & 0xFF) != raw.SQLITE_CORRUPT) throw Sql.Error(_rdb, rc, $"read slot {slot}");
                reason = "sqlite: " + raw.sqlite3_errmsg(_rdb).utf8_to_string();
                owner = default;
                stored = 0;
                actual = 0;
            }
        }
        MarkBad(slot, owner, stored, actual, reason);
        Interlocked.Increment(ref Counters.ReadsCorrupt);
        return SwapReadResult.Corrupt;
    }

    /// <summary>Moves a slot from slots to bad_slots (one transaction) and makes it bad in memory.</summary>
    void MarkBad(long slot, SwapOwner owner, long storedCrc, uint actualCrc, string reason)
    {
        lock (_writeLock)
        {
            lock (_stateLock)
            {
                var st = StateOf(slot);
                if (st == SwapSlotState.Bad) return; // another reader got here first
                if (st == SwapSlotState.Used) Counters.SlotsUsed--;
                else if (st == SwapSlotState.Reserved) { _reserved.Remove(slot); Counters.SlotsReserved--; }
                _state[slot] = (byte)SwapSlotState.Bad;
                Counters.BadSlots++;
            }
            // Even if recording it in the file fails (the file may be damaged), the slot stays bad in memory.
            EndReaderSnapshot();
            int rc = raw.sqlite3_step(_begin);
            raw.sqlite3_reset(_begin);
            if (rc != raw.SQLITE_DONE) return;
            try
            {
                raw.sqlite3_bind_int64(_insertBad, 1, slot);
                if (owner.Kind != 0)
                {
                    raw.sqlite3_bind_int64(_insertBad, 2, (long)owner.Kind);
                    raw.sqlite3_bind_int64(_insertBad, 3, owner.Id);
                    raw.sqlite3_bind_int64(_insertBad, 4, owner.Index);
                    raw.sqlite3_bind_int64(_insertBad, 5, storedCrc);
                    raw.sqlite3_bind_int64(_insertBad, 6, actualCrc);
                }
                else
                {
                    for (int i = 2; i <= 6; i++) raw.sqlite3_bind_null(_insertBad, i);
                }
                raw.sqlite3_bind_text(_insertBad, 7, reason);
                Sql.Exec(_insertBad, "mark bad slot");
                raw.sqlite3_bind_int64(_delete, 1, slot);
                Sql.Exec(_delete, "drop bad slot");
                Sql.Exec(_commit, "commit");
                CommitDone(2);
            }
            catch (SwapStoreException)
            {
                RollbackQuietly();
            }
        }
    }
}
