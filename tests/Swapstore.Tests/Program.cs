using System.Globalization;
using System.Text;

namespace Lab.Swapstore.Tests;

/// <summary>
/// Entry point used only when the kill -9 test re-runs this assembly as a child
/// (`dotnet exec Swapstore.Tests.dll writer FILE SEED`); the test host never calls it.
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        if (args.Length == 3 && args[0] == "writer") return Writer(args[1], int.Parse(args[2], CultureInfo.InvariantCulture));
        Console.Error.WriteLine("usage: Swapstore.Tests writer FILE SEED");
        return 2;
    }

    /// <summary>
    /// Writes clusters for ever (until killed). Before each commit it prints one line per page,
    /// "P slot gen crc ." (pending), after it "W slot gen crc .", and around each free "f slot ." (about to free) and "F slot ." (committed); a cluster's lines go out in
    /// one write (under PIPE_BUF) so a kill never leaves half a cluster's report. The trailing "."
    /// lets the reader discard a torn last line.
    /// </summary>
    static int Writer(string path, int seed)
    {
        var rng = new Random(seed);
        using var store = SwapStore.Open(path);
        var stdout = new StreamWriter(Console.OpenStandardOutput(), new UTF8Encoding(false), 1 << 16) { AutoFlush = false };
        stdout.Write("READY .\n");
        stdout.Flush();
        var buffer = new byte[32 * SwapStore.PageBytes];
        var writes = new SlotWrite[32];
        var owners = new SwapOwner[32];
        var slots = new long[32];
        var mine = new List<long>();
        var gens = new Dictionary<long, long>();
        var sb = new StringBuilder();
        long gen = (long)seed << 32;

        void WriteAndReport(ReadOnlySpan<long> which)
        {
            for (int i = 0; i < which.Length; i++)
            {
                var page = buffer.AsMemory(i * SwapStore.PageBytes, SwapStore.PageBytes);
                gens[which[i]] = ++gen;
                Pages.Fill(page.Span, which[i], gen);
                writes[i] = new SlotWrite(which[i], page);
            }
            // "P" first: a cluster that commits but is killed before its "W" lines may hold the new
            // bytes of a slot the reader knows with older ones (a rewrite).
            sb.Clear();
            for (int i = 0; i < which.Length; i++)
                sb.Append(CultureInfo.InvariantCulture, $"P {which[i]} {gens[which[i]]} {Crc32C.SlotChecksum(which[i], writes[i].Page.Span)} .\n");
            stdout.Write(sb.ToString());
            stdout.Flush();
            store.WriteCluster(writes.AsSpan(0, which.Length));
            sb.Clear();
            for (int i = 0; i < which.Length; i++)
                sb.Append(CultureInfo.InvariantCulture, $"W {which[i]} {gens[which[i]]} {Crc32C.SlotChecksum(which[i], writes[i].Page.Span)} .\n");
            stdout.Write(sb.ToString());
            stdout.Flush();
        }

        for (long round = 0; ; round++)
        {
            int n = rng.Next(2) == 0 ? 16 : 32;
            long objectId = round % 7 + 1;
            for (int i = 0; i < n; i++)
                owners[i] = rng.Next(3) == 0 ? SwapOwner.Anon(round * 32 + i) : SwapOwner.Object(objectId, round * 32 + i);
            int got = store.AllocateMany(owners.AsSpan(0, n), slots);
            WriteAndReport(slots.AsSpan(0, got));

            // Sometimes rewrite pages written before (a page evicted again with new bytes).
            if (mine.Count > 64 && rng.Next(4) == 0)
            {
                var again = new HashSet<long>();
                while (again.Count < 4) again.Add(mine[rng.Next(mine.Count)]);
                WriteAndReport(again.ToArray());
            }
            for (int i = 0; i < got; i++) mine.Add(slots[i]);

            // Free some, committed by FreeMany, then report; the working set stays near 1000 slots.
            if (mine.Count > 1000 || (mine.Count > 100 && rng.Next(3) == 0))
            {
                var victims = new HashSet<long>();
                int k = mine.Count > 1000 ? 32 : 8;
                while (victims.Count < k) victims.Add(mine[rng.Next(mine.Count)]);
                var arr = victims.ToArray();
                // Announce first: a kill between the commit and the report leaves these gone
                // but unreported, which the test must accept.
                sb.Clear();
                foreach (long s in arr) sb.Append(CultureInfo.InvariantCulture, $"f {s} .\n");
                stdout.Write(sb.ToString());
                stdout.Flush();
                store.FreeMany(arr);
                mine.RemoveAll(victims.Contains);
                sb.Clear();
                foreach (long s in arr) { sb.Append(CultureInfo.InvariantCulture, $"F {s} .\n"); gens.Remove(s); }
                stdout.Write(sb.ToString());
                stdout.Flush();
            }
        }
    }
}
