using System.Runtime.InteropServices;
using Microsoft.Data.Sqlite;
using SQLitePCL;

namespace Lab.Swapstore;

/// <summary>Where a slot stands, in the store's memory.</summary>
public enum SwapSlotState : byte
{
    Free = 0,
    /// <summary>Handed out by Allocate, not written yet (not in the file).</summary>
    Reserved = 1,
    /// <summary>Holds a committed page.</summary>
    Used = 2,
    /// <summary>Failed its checksum once; never handed out again.</summary>
    Bad = 3,
}

/// <summary>
/// The swap store: 4 KiB anonymous pages evicted by the lab, one row per slot in one SQLite file
/// (WAL). Slots are integers from 1 (0 means "no slot", as in the BSDs). Each row records its owner
/// and a CRC-32C that every read verifies. Thread-safe: writes (clusters, frees, bad marks) go
/// through one writer connection, reads through a second connection so that a pageout cluster in
/// progress does not stall swap-ins.
/// </summary>
public sealed class SwapStore : IDisposable
{
    public const int PageBytes = 4096;

    /// <summary>PRAGMA application_id of a swap store file ("LbSw").</summary>
    public const int ApplicationId = 0x4C625377;
    public const string FormatName = "lab-swapstore";
    public const int FormatVersion = 1;

    internal const string SchemaSql = """
        CREATE TABLE meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
        CREATE TABLE owner_kinds(kind INTEGER PRIMARY KEY, name TEXT NOT NULL);
        INSERT INTO owner_kinds VALUES (1, 'object'), (2, 'anon');
        CREATE TABLE slots(
          slot        INTEGER PRIMARY KEY,
          owner_kind  INTEGER NOT NULL,
          owner_id    INTEGER NOT NULL,
          owner_index INTEGER NOT NULL,
          crc         INTEGER NOT NULL,
          data        BLOB NOT NULL);
        CREATE INDEX slots_by_owner ON slots(owner_kind, owner_id, owner_index);
        CREATE TABLE bad_slots(
          slot        INTEGER PRIMARY KEY,
          owner_kind  INTEGER,
          owner_id    INTEGER,
          owner_index INTEGER,
          stored_crc  INTEGER,
          actual_crc  INTEGER,
          reason      TEXT NOT NULL,
          found_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));
        CREATE VIEW slot_info AS
          SELECT s.slot, k.name AS owner_kind, s.owner_id, s.owner_index,
                 printf('%08x', s.crc) AS crc, length(s.data) AS bytes
          FROM slots s LEFT JOIN owner_kinds k ON k.kind = s.owner_kind;
        """;

    readonly SwapStoreOptions _options;
    readonly SqliteConnection _writeConn, _readConn;
    readonly sqlite3 _wdb, _rdb;

    // Writer-side statements, used under _writeLock.
    readonly sqlite3_stmt _begin, _commit, _rollback, _upsert, _delete, _insertBad, _reassign;
    // Reader-side statements, used under _readLock.
    readonly sqlite3_stmt _select, _readBegin, _readEnd;
    // The reader keeps one read transaction (snapshot) open across reads: starting one costs
    // SQLite two fcntl locks and an fstat, three system calls for a read that otherwise needs none.
    // Every write transaction ends it (before BEGIN and after COMMIT) so that reads see each
    // commit and the snapshot never holds back a checkpoint.
    bool _readerInTxn;
    long _pagesSinceCheckpoint, _walPages;

    // Checkpoints (copying the WAL into the main file: a read and a write of every page, and the
    // fsyncs) run on a thread of their own with a third connection, so that the pageout thread
    // only appends to the WAL; the writer takes over (backpressure) when the WAL grows too big.
    readonly SqliteConnection? _ckptConn;
    readonly Thread? _ckptThread;
    readonly AutoResetEvent _ckptWake = new(false);
    readonly Lock _ckptLock = new();
    volatile bool _stopping;

    readonly Lock _writeLock = new(), _readLock = new(), _stateLock = new();

    // In-memory slot map (rebuilt from the file at open), under _stateLock. One byte per slot, like
    // the blist bitmap of the BSD swap allocators; freed slots are kept on a stack for reuse.
    byte[] _state = new byte[1024];
    long _highWater = 1; // next never-used slot
    readonly Stack<long> _free = new();
    readonly Dictionary<long, SwapOwner> _reserved = new();
    // Slots freed whose rows are still in the file: deleted by the next write transaction, so a
    // FreeBSD dirty fault (swap_pager_unswapped) does not pay a commit of its own.
    readonly List<long> _pendingDeletes = new();
    long[] _deleteScratch = new long[64];
    SwapOwner[] _ownerScratch = new SwapOwner[32];
    bool _disposed;

    /// <summary>Counters, plain long fields.</summary>
    public SwapCounters Counters { get; } = new();
    public string Path { get; }

    /// <summary>Test hook: called after each row of a cluster is written, inside its transaction (row index).</summary>
    internal Action<int>? AfterClusterRow;

    SwapStore(string path, SwapStoreOptions options)
    {
        Path = path;
        _options = options;
        Sql.Init();
        _writeConn = OpenConnection(path, create: true);
        try
        {
            _wdb = _writeConn.Handle!;
            PrepareFile(_writeConn, path, options);
            Configure(_writeConn, options);
            if (options.ClearOnOpen)
            {
                Sql.Exec(_wdb, "DELETE FROM slots");
                NonQuery(_writeConn, "VACUUM"); // an emptied store starts at its size at creation
            }
            RebuildState();

            _readConn = OpenConnection(path, create: false);
            Configure(_readConn, options);
            _rdb = _readConn.Handle!;
            if (options.BackgroundCheckpoint && options.WalAutoCheckpoint > 0)
            {
                _ckptConn = OpenConnection(path, create: false);
                Configure(_ckptConn, options);
            }
        }
        catch
        {
            _writeConn.Dispose();
            throw;
        }

        _begin = Sql.Prepare(_wdb, "BEGIN IMMEDIATE");
        _commit = Sql.Prepare(_wdb, "COMMIT");
        _rollback = Sql.Prepare(_wdb, "ROLLBACK");
        // A reserved slot gets its owner; rewriting a used slot keeps the owner it has.
        _upsert = Sql.Prepare(_wdb,
            "INSERT INTO slots(slot, owner_kind, owner_id, owner_index, crc, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6) " +
            "ON CONFLICT(slot) DO UPDATE SET crc = excluded.crc, data = excluded.data");
        _delete = Sql.Prepare(_wdb, "DELETE FROM slots WHERE slot = ?1");
        _insertBad = Sql.Prepare(_wdb,
            "INSERT OR REPLACE INTO bad_slots(slot, owner_kind, owner_id, owner_index, stored_crc, actual_crc, reason) " +
            "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
        _reassign = Sql.Prepare(_wdb, "UPDATE slots SET owner_kind = ?2, owner_id = ?3, owner_index = ?4 WHERE slot = ?1");
        _select = Sql.Prepare(_rdb, "SELECT crc, data, owner_kind, owner_id, owner_index FROM slots WHERE slot = ?1");
        _readBegin = Sql.Prepare(_rdb, "BEGIN");
        _readEnd = Sql.Prepare(_rdb, "COMMIT");
        if (_ckptConn != null)
        {
            _ckptThread = new Thread(CheckpointLoop) { IsBackground = true, Name = "swapstore checkpoint" };
            _ckptThread.Start();
        }
    }

    /// <summary>
    /// Opens the swap store at <paramref name="path"/>, creating it if the file does not exist.
    /// Throws <see cref="SwapStoreException"/> (one-line message) if the file is not a swap store.
    /// </summary>
    public static SwapStore Open(string path, SwapStoreOptions? options = null)
    {
        if (options is { PageSize: < 512 or > 65536 } || (options is { } o && (o.PageSize & (o.PageSize - 1)) != 0))
            throw new ArgumentException("page size must be a power of two in 512..65536", nameof(options));
        return new SwapStore(System.IO.Path.GetFullPath(path), options ?? new SwapStoreOptions());
    }

    internal static SqliteConnection OpenConnection(string path, bool create, bool readOnly = false)
    {
        Sql.Init();
        var csb = new SqliteConnectionStringBuilder
        {
            DataSource = path,
            // Pooling would keep the file open after Dispose; the store owns its connections.
            Pooling = false,
            Mode = readOnly ? SqliteOpenMode.ReadOnly : create ? SqliteOpenMode.ReadWriteCreate : SqliteOpenMode.ReadWrite,
        };
        var conn = new SqliteConnection(csb.ToString());
        try
        {
            conn.Open();
        }
        catch (SqliteException e)
        {
            conn.Dispose();
            throw new SwapStoreException($"{path}: cannot open: {FirstLine(e.Message)}", e);
        }
        return conn;
    }

    /// <summary>Creates the schema in a new (empty) file, or checks that an existing one is a swap store.</summary>
    static void PrepareFile(SqliteConnection conn, string path, SwapStoreOptions options)
    {
        long appId, tables;
        try
        {
            appId = ScalarLong(conn, "PRAGMA application_id");
            tables = ScalarLong(conn, "SELECT count(*) FROM sqlite_schema");
        }
        catch (SqliteException e)
        {
            throw new SwapStoreException($"{path}: not a swap store: {FirstLine(e.Message)}", e);
        }
        if (appId == 0 && tables == 0)
        {
            // page_size must be set before the first table (and before WAL) fixes it.
            NonQuery(conn, $"PRAGMA page_size = {options.PageSize}");
            NonQuery(conn, "PRAGMA journal_mode = WAL");
            using var tx = conn.BeginTransaction();
            NonQuery(conn, SchemaSql, tx);
            NonQuery(conn, $"PRAGMA application_id = {ApplicationId}", tx);
            using var cmd = conn.CreateCommand();
            cmd.Transaction = tx;
            cmd.CommandText = "INSERT INTO meta(key, value) VALUES ('format', $f), ('version', $v), ('page_bytes', $p), " +
                              "('checksum', 'crc32c(data || slot as 8 bytes little-endian)'), " +
                              "('created', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))";
            cmd.Parameters.AddWithValue("$f", FormatName);
            cmd.Parameters.AddWithValue("$v", FormatVersion);
            cmd.Parameters.AddWithValue("$p", PageBytes);
            cmd.ExecuteNonQuery();
            tx.Commit();
            return;
        }
        CheckFormat(conn, path, appId);
    }

    internal static void CheckFormat(SqliteConnection conn, string path, long appId)
    {
        if (appId != ApplicationId)
            throw new SwapStoreException($"{path}: not a swap store (SQLite application_id {appId:x}, expected {ApplicationId:x})");
        string? format, version;
        try
        {
            format = ScalarString(conn, "SELECT value FROM meta WHERE key = 'format'");
            version = ScalarString(conn, "SELECT value FROM meta WHERE key = 'version'");
        }
        catch (SqliteException e)
        {
            throw new SwapStoreException($"{path}: not a swap store: {FirstLine(e.Message)}", e);
        }
        if (format != FormatName)
            throw new SwapStoreException($"{path}: not a swap store (meta format is '{format}')");
        if (version != FormatVersion.ToString())
            throw new SwapStoreException($"{path}: swap store format version {version} is not supported (expected {FormatVersion})");
    }

    static void Configure(SqliteConnection conn, SwapStoreOptions o)
    {
        NonQuery(conn, "PRAGMA journal_mode = WAL");
        NonQuery(conn, $"PRAGMA synchronous = {o.Synchronous}");
        NonQuery(conn, $"PRAGMA mmap_size = {o.MmapSize}");
        NonQuery(conn, $"PRAGMA cache_size = {-o.CacheKiB}");
        // Checkpoints are ours (see CommitWrite): SQLite's automatic one would run inside COMMIT
        // while the reader still holds its snapshot, could never copy the last frames, and the
        // WAL would never restart.
        NonQuery(conn, "PRAGMA wal_autocheckpoint = 0");
        // Another process (sqlite3, lab swap inspect) may hold a read lock briefly.
        NonQuery(conn, "PRAGMA busy_timeout = 5000");
    }

    void RebuildState()
    {
        using var cmd = _writeConn.CreateCommand();
        cmd.CommandText = "SELECT slot, 2 FROM slots UNION ALL SELECT slot, 3 FROM bad_slots";
        using (var r = cmd.ExecuteReader())
        {
            while (r.Read())
            {
                long slot = r.GetInt64(0);
                if (slot <= 0 || slot > int.MaxValue) continue; // not ours to manage
                EnsureCapacity(slot);
                var st = (SwapSlotState)r.GetInt64(1);
                // A slot both in slots and bad_slots (a crash between the two statements cannot
                // happen inside one transaction, but be safe): bad wins.
                if ((SwapSlotState)_state[slot] == SwapSlotState.Bad) continue;
                if ((SwapSlotState)_state[slot] == SwapSlotState.Used && st == SwapSlotState.Bad) Counters.SlotsUsed--;
                _state[slot] = (byte)st;
                if (st == SwapSlotState.Used) Counters.SlotsUsed++; else Counters.BadSlots++;
                if (slot >= _highWater) _highWater = slot + 1;
            }
        }
        // Holes below the high-water mark are free; push them high to low so the lowest is reused first.
        for (long s = _highWater - 1; s >= 1; s--)
            if (_state[s] == (byte)SwapSlotState.Free) _free.Push(s);
    }

    void EnsureCapacity(long slot)
    {
        if (slot < _state.Length) return;
        long n = _state.Length;
        while (n <= slot) n *= 2;
        Array.Resize(ref _state, (int)Math.Min(n, Array.MaxLength));
    }

    // ---- allocation ------------------------------------------------------------------------------

    /// <summary>
    /// Reserves a free slot for <paramref name="owner"/> (a freed slot if there is one, lowest
    /// first at open, most recently freed afterwards). Reservations live in memory only: after a
    /// crash an unwritten slot is simply free. False when <see cref="SwapStoreOptions.MaxSlots"/> is reached.
    /// </summary>
    public bool TryAllocate(SwapOwner owner, out long slot)
    {
        ThrowIfDisposed();
        lock (_stateLock)
        {
            // Stale stack entries (a slot found bad after it was freed) are skipped here.
            while (_free.TryPop(out slot))
                if (_state[slot] == (byte)SwapSlotState.Free) goto found;
            if (_options.MaxSlots > 0 && _highWater > _options.MaxSlots) { slot = 0; return false; }
            if (_highWater >= int.MaxValue) { slot = 0; return false; }
            slot = _highWater++;
            EnsureCapacity(slot);
        found:
            _state[slot] = (byte)SwapSlotState.Reserved;
            _reserved[slot] = owner;
            Counters.SlotsReserved++;
            return true;
        }
    }

    /// <summary>Reserves a slot for <paramref name="owner"/>; throws <see cref="SwapStoreException"/> when the store is full.</summary>
    public long Allocate(SwapOwner owner) =>
        TryAllocate(owner, out long slot) ? slot
            : throw new SwapStoreException($"swap store full ({_options.MaxSlots} slots)");

    /// <summary>
    /// Reserves one slot per owner into <paramref name="slots"/> (a pageout cluster). Returns how many
    /// were reserved: fewer than asked only when the store is full.
    /// </summary>
    public int AllocateMany(ReadOnlySpan<SwapOwner> owners, Span<long> slots)
    {
        if (slots.Length < owners.Length) throw new ArgumentException("slots is shorter than owners", nameof(slots));
        for (int i = 0; i < owners.Length; i++)
            if (!TryAllocate(owners[i], out slots[i])) return i;
        return owners.Length;
    }

    /// <summary>The slot's state in memory (Free for any slot never handed out).</summary>
    public SwapSlotState GetState(long slot)
    {
        lock (_stateLock) return StateOf(slot);
    }

    SwapSlotState StateOf(long slot) =>
        slot > 0 && slot < _state.Length ? (SwapSlotState)_state[slot] : SwapSlotState.Free;

    /// <summary>The next slot number never handed out; slots below it are used, reserved, bad or free.</summary>
    public long HighWaterMark { get { lock (_stateLock) return _highWater; } }

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
