using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using Microsoft.Data.Sqlite;
using Microsoft.Win32.SafeHandles;

namespace Lab.Swapstore.Bench;

/// <summary>
/// Pages per second for the swap store and for a raw slot file in the same run:
/// clustered writes (16 and 32 pages per transaction) and random-order reads, plus the same
/// loops through Microsoft.Data.Sqlite (ADO.NET) to show what the raw SQLite API buys.
/// The raw file gets the fsync policy of SQLite's WAL with synchronous=NORMAL: no sync per write,
/// one fdatasync per wal_autocheckpoint pages (SQLite syncs only when it checkpoints).
/// </summary>
static partial class Program
{
    const int Page = SwapStore.PageBytes;

    static int Main(string[] args)
    {
        var opt = Options.Parse(args);
        if (opt is null) return 2;
        string dir = opt.Dir ?? Directory.CreateTempSubdirectory("swap-bench-").FullName;
        Directory.CreateDirectory(dir);
        try { Run(opt, dir); }
        finally { if (opt.Dir is null) Directory.Delete(dir, true); }
        return 0;
    }

    static void Run(Options o, string dir)
    {
        var storeOptions = new SwapStoreOptions
        {
            PageSize = o.PageSize,
            Synchronous = o.Sync,
            MmapSize = o.Mmap,
            WalAutoCheckpoint = o.Checkpoint,
            BackgroundCheckpoint = o.BgCheckpoint,
        };
        // Every page distinct (random bytes), generated once so both sides pay the same.
        var data = new byte[(long)o.Pages * Page];
        new Random(1).NextBytes(data);
        var order = Enumerable.Range(1, o.Pages).Select(i => (long)i).ToArray();
        new Random(2).Shuffle(order);

        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"swap store bench: {o.Pages} pages ({o.Pages * (long)Page >> 20} MiB), {o.Runs} runs (median), page_size {o.PageSize}, " +
            $"synchronous {o.Sync}, mmap_size {o.Mmap >> 20} MiB, checkpoint every {o.Checkpoint} pages ({(o.BgCheckpoint ? "background thread" : "inline")}), in {dir}"));
        Console.WriteLine("raw slot file: pwrite/pread at slot x 4096, " +
            (o.Sync.Equals("OFF", StringComparison.OrdinalIgnoreCase) ? "never synced (as synchronous=OFF)"
                : string.Create(CultureInfo.InvariantCulture, $"fdatasync every {o.Checkpoint} pages written (as the store's checkpoints)")));

        var rows = new List<(string name, double raw, double store, double ratio, double target)>();
        // Raw and store alternate within each run and the ratio is taken per run, so that noise from
        // other work on the machine hits both sides alike.
        void Pair(string name, Func<double> raw, Func<double> store, double target)
        {
            var r = new List<(double raw, double store)>();
            for (int i = 0; i < o.Runs; i++) r.Add((raw(), store()));
            rows.Add((name, Med(r.Select(x => x.raw)), Med(r.Select(x => x.store)), Med(r.Select(x => x.store / x.raw)), target));
        }
        int syncEvery = o.Sync.Equals("OFF", StringComparison.OrdinalIgnoreCase) ? 0 : o.Checkpoint;
        foreach (int cluster in new[] { 16, 32 })
        {
            if (o.Only != null && o.Only != $"write{cluster}") continue;
            Pair($"write, {cluster} pages/txn", () => RawWrite(dir, data, o.Pages, syncEvery),
                () => StoreWrite(dir, data, o.Pages, cluster, storeOptions), 0.5);
        }
        if (o.Only is null or "read")
        {
            string rawFile = Path.Combine(dir, "raw.slots");
            RawWrite(dir, data, o.Pages, syncEvery, keep: true);
            string dbFile = Path.Combine(dir, "read.db");
            StoreWrite(dir, data, o.Pages, 32, storeOptions, keepAs: dbFile);
            if (o.Only == "read")
            {
                // Profiling: store reads only, after the setup above.
                Console.Error.WriteLine($"reads start, pid {Environment.ProcessId}");
                Thread.Sleep(2000); // time to attach a profiler
                using var st = SwapStore.Open(dbFile, storeOptions);
                double r = Median(o.Runs, () => StoreRead(st, order));
                Console.Error.WriteLine($"store reads {r:N0}/s");
                return;
            }
            // The daemon keeps its store open for its lifetime, so the reading store stays open
            // across runs (its memory map's page tables fill once), as the raw file's handle does.
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"store file: {new FileInfo(dbFile).Length / (double)((long)o.Pages * Page):0.00}x the page bytes"));
            using var reader = SwapStore.Open(dbFile, storeOptions);
            Pair("read, random order", () => RawRead(rawFile, order, verify: false), () => StoreRead(reader, order), 0.5);
            Pair("  raw file + crc32c check", () => RawRead(rawFile, order, verify: false), () => RawRead(rawFile, order, verify: true), double.NaN);
            if (o.Ado && o.Only is null)
            {
                Pair("ADO.NET read, random order", () => RawRead(rawFile, order, verify: false), () => AdoRead(dbFile, order, storeOptions), double.NaN);
                Pair("ADO.NET write, 16 pages/txn", () => RawWrite(dir, data, o.Pages, syncEvery),
                    () => AdoWrite(dir, data, o.Pages, 16, storeOptions), double.NaN);
            }
        }

        Console.WriteLine();
        Console.WriteLine($"{"operation",-30} {"raw pages/s",12} {"store pages/s",14} {"ratio",7}  target");
        foreach (var (name, raw, store, ratio, target) in rows)
        {
            string verdict = double.IsNaN(target) ? "" : ratio >= target ? $">= {target:0.0} ok" : $">= {target:0.0} MISSED";
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{name,-30} {raw,12:N0} {store,14:N0} {ratio,7:0.00}  {verdict}"));
        }
    }

    static double Median(int runs, Func<double> f) => Med(Enumerable.Range(0, runs).Select(_ => f()));

    static double Med(IEnumerable<double> xs)
    {
        var r = xs.OrderBy(x => x).ToArray();
        return r[r.Length / 2];
    }

    // ---- raw slot file ---------------------------------------------------------------------------

    static double RawWrite(string dir, byte[] data, int pages, int syncEvery, bool keep = false)
    {
        string path = Path.Combine(dir, "raw.slots");
        File.Delete(path);
        var sw = Stopwatch.StartNew();
        using (var h = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite))
        {
            for (int i = 0; i < pages; i++)
            {
                long slot = i + 1;
                RandomAccess.Write(h, data.AsSpan(i * Page, Page), slot * Page);
                if (syncEvery > 0 && (i + 1) % syncEvery == 0) Sync(h);
            }
            if (syncEvery > 0) Sync(h);
        }
        double rate = pages / sw.Elapsed.TotalSeconds;
        if (!keep) File.Delete(path);
        return rate;
    }

    static double RawRead(string path, long[] order, bool verify)
    {
        using var h = File.OpenHandle(path, FileMode.Open, FileAccess.Read);
        var buf = new byte[Page];
        uint sink = 0;
        var sw = Stopwatch.StartNew();
        foreach (long slot in order)
        {
            if (RandomAccess.Read(h, buf, slot * Page) != Page) throw new IOException("short read");
            if (verify) sink ^= Crc32C.SlotChecksum(slot, buf);
        }
        double rate = order.Length / sw.Elapsed.TotalSeconds;
        GC.KeepAlive(sink);
        return rate;
    }

    static void Sync(SafeFileHandle h)
    {
        if (fdatasync((int)h.DangerousGetHandle()) != 0) throw new IOException($"fdatasync: errno {Marshal.GetLastPInvokeError()}");
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fdatasync(int fd);

    // ---- swap store ------------------------------------------------------------------------------

    static double StoreWrite(string dir, byte[] data, int pages, int cluster, SwapStoreOptions so, string? keepAs = null)
    {
        string path = keepAs ?? Path.Combine(dir, "write.db");
        DeleteDb(path);
        double rate;
        using (var store = SwapStore.Open(path, so))
        {
            var writes = new SlotWrite[cluster];
            var mem = data.AsMemory();
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < pages; i += cluster)
            {
                int n = Math.Min(cluster, pages - i);
                for (int k = 0; k < n; k++)
                {
                    long slot = store.Allocate(SwapOwner.Object(1, i + k));
                    writes[k] = new SlotWrite(slot, mem.Slice((i + k) * Page, Page));
                }
                store.WriteCluster(writes.AsSpan(0, n));
            }
            // Timed until every page is in the main file, as the raw side's last sync.
            store.Checkpoint();
            rate = pages / sw.Elapsed.TotalSeconds;
        }
        if (keepAs is null) DeleteDb(path);
        return rate;
    }

    static double StoreRead(SwapStore store, long[] order)
    {
        var buf = new byte[Page];
        var sw = Stopwatch.StartNew();
        foreach (long slot in order)
            if (store.Read(slot, buf) != SwapReadResult.Ok) throw new InvalidOperationException($"slot {slot}");
        return order.Length / sw.Elapsed.TotalSeconds;
    }

    static void DeleteDb(string path)
    {
        foreach (var p in new[] { path, path + "-wal", path + "-shm" }) File.Delete(p);
    }

    // ---- the same through Microsoft.Data.Sqlite (for comparison) ---------------------------------

    static SqliteConnection AdoOpen(string path, SwapStoreOptions so)
    {
        var c = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = path, Pooling = false }.ToString());
        c.Open();
        using var cmd = c.CreateCommand();
        cmd.CommandText = $"PRAGMA journal_mode=WAL; PRAGMA synchronous={so.Synchronous}; PRAGMA mmap_size={so.MmapSize}; " +
                          $"PRAGMA cache_size={-so.CacheKiB}; PRAGMA wal_autocheckpoint={so.WalAutoCheckpoint};";
        cmd.ExecuteNonQuery();
        return c;
    }

    static double AdoWrite(string dir, byte[] data, int pages, int cluster, SwapStoreOptions so)
    {
        string path = Path.Combine(dir, "ado.db");
        DeleteDb(path);
        SwapStore.Open(path, so).Dispose(); // same schema
        double rate;
        using (var c = AdoOpen(path, so))
        {
            using var cmd = c.CreateCommand();
            cmd.CommandText = "INSERT INTO slots(slot, owner_kind, owner_id, owner_index, crc, data) VALUES ($s, 1, 1, $i, $c, $d) " +
                              "ON CONFLICT(slot) DO UPDATE SET crc = excluded.crc, data = excluded.data";
            var ps = cmd.Parameters.Add("$s", SqliteType.Integer);
            var pi = cmd.Parameters.Add("$i", SqliteType.Integer);
            var pc = cmd.Parameters.Add("$c", SqliteType.Integer);
            var pd = cmd.Parameters.Add("$d", SqliteType.Blob);
            cmd.Prepare();
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < pages; i += cluster)
            {
                using var tx = c.BeginTransaction();
                cmd.Transaction = tx;
                int n = Math.Min(cluster, pages - i);
                for (int k = 0; k < n; k++)
                {
                    long slot = i + k + 1;
                    // ADO.NET binds byte[] only: one copy per page into an array of exactly 4096.
                    var page = data.AsSpan((i + k) * Page, Page).ToArray();
                    ps.Value = slot;
                    pi.Value = (long)(i + k);
                    pc.Value = (long)Crc32C.SlotChecksum(slot, page);
                    pd.Value = page;
                    cmd.ExecuteNonQuery();
                }
                tx.Commit();
            }
            rate = pages / sw.Elapsed.TotalSeconds;
        }
        DeleteDb(path);
        return rate;
    }

    static double AdoRead(string path, long[] order, SwapStoreOptions so)
    {
        using var c = AdoOpen(path, so);
        using var cmd = c.CreateCommand();
        cmd.CommandText = "SELECT crc, data FROM slots WHERE slot = $s";
        var ps = cmd.Parameters.Add("$s", SqliteType.Integer);
        cmd.Prepare();
        var buf = new byte[Page];
        var sw = Stopwatch.StartNew();
        foreach (long slot in order)
        {
            ps.Value = slot;
            using var r = cmd.ExecuteReader();
            if (!r.Read()) throw new InvalidOperationException($"slot {slot}");
            long crc = r.GetInt64(0);
            if (r.GetBytes(1, 0, buf, 0, Page) != Page || Crc32C.SlotChecksum(slot, buf) != crc)
                throw new InvalidOperationException($"slot {slot} corrupt");
        }
        return order.Length / sw.Elapsed.TotalSeconds;
    }

    sealed class Options
    {
        public int Pages = 32768, Runs = 5, PageSize = 32768, Checkpoint = 1000;
        public string Sync = "NORMAL";
        public long Mmap = 1L << 30;
        public bool Ado = true, BgCheckpoint = true;
        public string? Dir;
        /// <summary>Only this measurement (for profiling): write16, write32, read.</summary>
        public string? Only;

        public static Options? Parse(string[] args)
        {
            var o = new Options();
            for (int i = 0; i < args.Length; i++)
            {
                string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
                switch (args[i])
                {
                    case "--pages": o.Pages = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                    case "--runs": o.Runs = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                    case "--page-size": o.PageSize = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                    case "--checkpoint": o.Checkpoint = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                    case "--sync": o.Sync = Next(); break;
                    case "--mmap-mib": o.Mmap = long.Parse(Next(), CultureInfo.InvariantCulture) << 20; break;
                    case "--no-ado": o.Ado = false; break;
                    case "--inline-checkpoint": o.BgCheckpoint = false; break;
                    case "--dir": o.Dir = Next(); break;
                    case "--only": o.Only = Next(); break;
                    default:
                        Console.Error.WriteLine("usage: Swapstore.Bench [--pages N] [--runs N] [--page-size B] [--checkpoint FRAMES] " +
                                                "[--sync OFF|NORMAL|FULL] [--mmap-mib M] [--inline-checkpoint] [--no-ado] [--only write16|write32|read] [--dir DIR]");
                        return null;
                }
            }
            return o;
        }
    }
}
