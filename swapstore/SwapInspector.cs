using System.Globalization;
using System.Text;
using Microsoft.Data.Sqlite;

namespace Lab.Swapstore;

/// <summary>The text of <c>lab swap inspect FILE</c>: what a swap store holds, read-only.</summary>
public static class SwapInspector
{
    /// <summary>
    /// Describes the swap store at <paramref name="path"/>: slot counts (used, free, bad), pages by
    /// owner kind, the <paramref name="top"/> owners by slot count, and every bad slot. Opens the file
    /// read-only, so it works while the daemon has the store open. Throws
    /// <see cref="SwapStoreException"/> with a one-line message for a missing or non-swap file.
    /// </summary>
    public static string Inspect(string path, int top = 20) => Inspect(path, top, verify: false, out _);

    /// <summary>
    /// As <see cref="Inspect(string, int)"/>; with <paramref name="verify"/> also reads every stored
    /// page and checks its checksum (a slot that fails is listed; <paramref name="mismatches"/> counts them).
    /// </summary>
    public static string Inspect(string path, int top, bool verify, out long mismatches)
    {
        mismatches = 0;
        if (top < 0) throw new ArgumentOutOfRangeException(nameof(top));
        if (Directory.Exists(path)) throw new SwapStoreException($"{path}: is a directory, not a swap store");
        if (!File.Exists(path)) throw new SwapStoreException($"{path}: no such file");

        using var conn = SwapStore.OpenConnection(path, create: false, readOnly: true);
        try
        {
            long appId = SwapStore.ScalarLong(conn, "PRAGMA application_id");
            SwapStore.CheckFormat(conn, path, appId);
            var text = Describe(conn, path, top);
            return verify ? text + Verify(conn, out mismatches) : text;
        }
        catch (SqliteException e)
        {
            throw new SwapStoreException($"{path}: not a swap store: {SwapStore.FirstLine(e.Message)}", e);
        }
    }

    /// <summary>Every stored page against its checksum (the same check a swap-in makes).</summary>
    static string Verify(SqliteConnection conn, out long mismatches)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        long n = 0;
        mismatches = 0;
        using var cmd = conn.CreateCommand();
        cmd.CommandText = "SELECT slot, crc, data FROM slots ORDER BY slot";
        using var r = cmd.ExecuteReader();
        var listed = new StringBuilder();
        while (r.Read())
        {
            n++;
            long slot = r.GetInt64(0), stored = r.GetInt64(1);
            var data = (byte[])r.GetValue(2);
            bool ok = data.Length == SwapStore.PageBytes && Crc32C.SlotChecksum(slot, data) == stored;
            if (ok) continue;
            mismatches++;
            if (mismatches <= 20) listed.Append(inv, $"  slot {slot}: {(data.Length != SwapStore.PageBytes ? $"{data.Length} bytes" : "checksum mismatch")}\n");
        }
        sb.Append(inv, $"\nverified: {n} slots, {mismatches} failed their checksum\n").Append(listed);
        return sb.ToString();
    }

    static string Describe(SqliteConnection conn, string path, int top)
    {
        var inv = CultureInfo.InvariantCulture;
        long used = SwapStore.ScalarLong(conn, "SELECT count(*) FROM slots");
        long bad = SwapStore.ScalarLong(conn, "SELECT count(*) FROM bad_slots");
        long highest = SwapStore.ScalarLong(conn,
            "SELECT max(coalesce((SELECT max(slot) FROM slots), 0), coalesce((SELECT max(slot) FROM bad_slots), 0))");
        long free = Math.Max(0, highest - used - bad);
        long pageSize = SwapStore.ScalarLong(conn, "PRAGMA page_size");
        long dbPages = SwapStore.ScalarLong(conn, "PRAGMA page_count");
        long owners = SwapStore.ScalarLong(conn, "SELECT count(*) FROM (SELECT 1 FROM slots GROUP BY owner_kind, owner_id)");

        var sb = new StringBuilder();
        sb.Append(inv, $"swap store {path}\n");
        sb.Append(inv, $"  file: {dbPages * pageSize} bytes ({dbPages} SQLite pages of {pageSize}), WAL not counted\n");
        sb.Append(inv, $"  slots: {used} used, {free} free, {bad} bad (highest slot {highest})\n");
        sb.Append(inv, $"  page bytes stored: {used * SwapStore.PageBytes}\n");
        sb.Append(inv, $"  owners: {owners}\n");

        sb.Append("\nby owner kind\n");
        sb.Append(inv, $"  {"kind",-8} {"owners",8} {"slots",10}\n");
        using (var cmd = conn.CreateCommand())
        {
            // Every known kind is listed, with zeros, so the output has a fixed shape.
            cmd.CommandText = """
                SELECT k.name, count(DISTINCT s.owner_id), count(s.slot)
                FROM owner_kinds k LEFT JOIN slots s ON s.owner_kind = k.kind
                GROUP BY k.kind ORDER BY k.kind
                """;
            using var r = cmd.ExecuteReader();
            while (r.Read())
                sb.Append(inv, $"  {r.GetString(0),-8} {r.GetInt64(1),8} {r.GetInt64(2),10}\n");
        }
        long unknownKind = SwapStore.ScalarLong(conn,
            "SELECT count(*) FROM slots WHERE owner_kind NOT IN (SELECT kind FROM owner_kinds)");
        if (unknownKind > 0) sb.Append(inv, $"  {"unknown",-8} {"",8} {unknownKind,10}\n");

        sb.Append(inv, $"\ntop {top} owners by slots\n");
        sb.Append(inv, $"  {"kind",-8} {"id",12} {"slots",8} {"first index",12} {"last index",12} {"first slot",10} {"last slot",10}\n");
        using (var cmd = conn.CreateCommand())
        {
            cmd.CommandText = """
                SELECT coalesce(k.name, 'kind ' || s.owner_kind), s.owner_id, count(*),
                       min(s.owner_index), max(s.owner_index), min(s.slot), max(s.slot)
                FROM slots s LEFT JOIN owner_kinds k ON k.kind = s.owner_kind
                GROUP BY s.owner_kind, s.owner_id
                ORDER BY count(*) DESC, s.owner_kind, s.owner_id
                LIMIT $top
                """;
            cmd.Parameters.AddWithValue("$top", top);
            using var r = cmd.ExecuteReader();
            int rows = 0;
            while (r.Read())
            {
                rows++;
                sb.Append(inv, $"  {r.GetString(0),-8} {r.GetInt64(1),12} {r.GetInt64(2),8} {r.GetInt64(3),12} {r.GetInt64(4),12} {r.GetInt64(5),10} {r.GetInt64(6),10}\n");
            }
            if (rows == 0) sb.Append("  (none)\n");
            else if (owners > rows) sb.Append(inv, $"  ... {owners - rows} more owners\n");
        }

        sb.Append(inv, $"\nbad slots: {bad}\n");
        if (bad > 0)
        {
            sb.Append(inv, $"  {"slot",10} {"owner",-28} {"stored crc",10} {"actual crc",10} {"found at",-24} reason\n");
            using var cmd = conn.CreateCommand();
            cmd.CommandText = """
                SELECT b.slot, coalesce(k.name, ''), b.owner_id, b.owner_index, b.stored_crc, b.actual_crc, b.found_at, b.reason
                FROM bad_slots b LEFT JOIN owner_kinds k ON k.kind = b.owner_kind ORDER BY b.slot
                """;
            using var r = cmd.ExecuteReader();
            while (r.Read())
            {
                string owner = r.IsDBNull(2) ? "?" : r.GetString(1) == "anon"
                    ? $"anon {r.GetInt64(2)}" : $"{r.GetString(1)} {r.GetInt64(2)} pindex {r.GetInt64(3)}";
                string stored = r.IsDBNull(4) ? "-" : r.GetInt64(4).ToString("x8", inv);
                string actual = r.IsDBNull(5) ? "-" : r.GetInt64(5).ToString("x8", inv);
                sb.Append(inv, $"  {r.GetInt64(0),10} {owner,-28} {stored,10} {actual,10} {r.GetString(6),-24} {r.GetString(7)}\n");
            }
        }
        return sb.ToString();
    }
}
