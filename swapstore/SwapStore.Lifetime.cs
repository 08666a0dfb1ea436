using Microsoft.Data.Sqlite;
using SQLitePCL;

namespace Lab.Swapstore;

public sealed partial class SwapStore
{
    // ---- lifetime --------------------------------------------------------------------------------

    /// <summary>Copies the WAL into the main file (PASSIVE: does not wait for readers).</summary>
    public void Checkpoint()
    {
        ThrowIfDisposed();
        lock (_writeLock)
        {
            EndReaderSnapshot();
            CheckpointLocked();
        }
    }

    /// <summary>
    /// Gives back what the store holds beyond its live pages (a daemon going idle): commits the
    /// pending frees, copies the WAL in and truncates it, and releases SQLite's page caches. An
    /// empty store is also vacuumed back to its size at creation; one that still holds pages
    /// keeps its free pages for the next page-outs (SQLite reuses them). No auto_vacuum: with it on,
    /// the kill -9 crash test once read other bytes from a committed slot (cause not found), and
    /// a full VACUUM of an empty store costs next to nothing.
    /// </summary>
    public void Trim()
    {
        ThrowIfDisposed();
        lock (_writeLock)
        {
            Flush();
            EndReaderSnapshot();
            if (Counters.SlotsUsed == 0)
            {
                // VACUUM needs every reader out; a reader that holds on (sqlite3, lab swap inspect) only
                // means the file shrinks at the next idle trim.
                try { Sql.Exec(_wdb, "VACUUM"); }
                catch (SwapStoreException) { }
            }
            lock (_ckptLock)
            {
                EndReaderSnapshot();
                int rc = raw.sqlite3_wal_checkpoint_v2(_wdb, "main", raw.SQLITE_CHECKPOINT_TRUNCATE, out int log, out int done);
                if (rc == raw.SQLITE_OK && log == done) { _walPages = 0; _pagesSinceCheckpoint = 0; }
                Interlocked.Increment(ref Counters.Checkpoints);
                if (_ckptConn != null) Sql.Exec(_ckptConn.Handle!, "PRAGMA shrink_memory");
            }
            lock (_readLock) Sql.Exec(_rdb, "PRAGMA shrink_memory");
            Sql.Exec(_wdb, "PRAGMA shrink_memory");
        }
    }

    /// <summary>Bytes of the store's files now: the database and its WAL.</summary>
    public long FileBytes()
    {
        long n = 0;
        foreach (var f in new[] { Path, Path + "-wal" })
            try { n += new FileInfo(f).Length; } catch (IOException) { }
        return n;
    }

    void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    /// <summary>Commits pending frees, checkpoints and truncates the WAL, and closes the file.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        try { Flush(); } catch (SwapStoreException) { /* closing anyway; the rows stay until next open */ }
        _disposed = true;
        if (_ckptThread != null)
        {
            _stopping = true;
            _ckptWake.Set();
            _ckptThread.Join();
            _ckptConn!.Dispose();
        }
        _ckptWake.Dispose();
        lock (_writeLock)
        lock (_readLock)
        {
            foreach (var s in new[] { _select, _readBegin, _readEnd })
                raw.sqlite3_finalize(s);
            _readConn.Dispose();
            foreach (var s in new[] { _begin, _commit, _rollback, _upsert, _delete, _insertBad, _reassign })
                raw.sqlite3_finalize(s);
            raw.sqlite3_wal_checkpoint_v2(_wdb, "main", raw.SQLITE_CHECKPOINT_TRUNCATE, out _, out _);
            _writeConn.Dispose();
        }
    }

    // ---- small ADO helpers for the cold paths ----------------------------------------------------

    internal static void NonQuery(SqliteConnection c, string sql, SqliteTransaction? tx = null)
    {
        using var cmd = c.CreateCommand();
        cmd.Transaction = tx;
        cmd.CommandText = sql;
        cmd.ExecuteNonQuery();
    }

    internal static long ScalarLong(SqliteConnection c, string sql)
    {
        using var cmd = c.CreateCommand();
        cmd.CommandText = sql;
        return Convert.ToInt64(cmd.ExecuteScalar() ?? 0L);
    }

    internal static string? ScalarString(SqliteConnection c, string sql)
    {
        using var cmd = c.CreateCommand();
        cmd.CommandText = sql;
        return cmd.ExecuteScalar()?.ToString();
    }

    internal static string FirstLine(string s)
    {
        int i = s.IndexOfAny(['\r', '\n']);
        return i < 0 ? s : s[..i];
    }
}
