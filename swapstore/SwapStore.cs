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
public sealed partial class SwapStore : IDisposable
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
}
