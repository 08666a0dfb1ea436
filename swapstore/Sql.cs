using SQLitePCL;

namespace Lab.Swapstore;

/// <summary>Thin helpers over SQLitePCLRaw's raw API for the hot paths (no per-call allocation).</summary>
internal static class Sql
{
    static int _initialised;

    /// <summary>Selects the bundled e_sqlite3 provider, once per process.</summary>
    public static void Init()
    {
        if (Interlocked.Exchange(ref _initialised, 1) == 0) Batteries_V2.Init();
    }

    public static sqlite3_stmt Prepare(sqlite3 db, string sql)
    {
        // PERSISTENT: these statements live as long as the store, so SQLite need not use its lookaside for them.
        int rc = raw.sqlite3_prepare_v3(db, sql, raw.SQLITE_PREPARE_PERSISTENT, out sqlite3_stmt stmt);
        if (rc != raw.SQLITE_OK) throw Error(db, rc, "prepare " + sql);
        return stmt;
    }

    /// <summary>Steps a statement that returns no rows, then resets it for reuse.</summary>
    public static void Exec(sqlite3_stmt stmt, string what)
    {
        int rc = raw.sqlite3_step(stmt);
        raw.sqlite3_reset(stmt);
        if (rc != raw.SQLITE_DONE) throw Error(raw.sqlite3_db_handle(stmt), rc, what);
    }

    public static void Exec(sqlite3 db, string sql)
    {
        int rc = raw.sqlite3_exec(db, sql, out string? err);
        if (rc != raw.SQLITE_OK) throw new SwapStoreException($"{sql}: {err ?? raw.sqlite3_errstr(rc).utf8_to_string()}");
    }

    public static SwapStoreException Error(sqlite3 db, int rc, string what)
    {
        string msg = raw.sqlite3_errmsg(db).utf8_to_string() ?? raw.sqlite3_errstr(rc).utf8_to_string();
        return new SwapStoreException($"swap store: {what}: {msg} (sqlite error {rc})");
    }
}
