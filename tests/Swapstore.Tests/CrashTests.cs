using System.Diagnostics;
using System.Globalization;
using Xunit;
using Xunit.Abstractions;

namespace Lab.Swapstore.Tests;

public class CrashTests(ITestOutputHelper output)
{
    /// <summary>
    /// A child process writes clusters in a loop, announces every page before its commit and reports
    /// it after; we SIGKILL it
    /// mid-stream, three times on the same file (each round's child reopens what the last one left). After each kill the file must pass
    /// integrity_check, every reported page must read back with its checksum and its exact
    /// bytes, every reported free must stay free, and no slot in the store may read Corrupt.
    /// </summary>
    [Fact]
    public void KillDashNine_LosesNoCommittedSlot()
    {
        using var dir = new TempDir();
        string file = dir.File();
        var live = new Dictionary<long, (long gen, uint crc)>(); // slot -> last committed page
        var maybe = new Dictionary<long, (long gen, uint crc)>(); // free announced, commit not reported
        var pending = new Dictionary<long, (long gen, uint crc)>(); // write announced, commit not reported
        var rng = new Random(7);
        for (int round = 0; round < 3; round++)
        {
            var (lines, torn) = RunAndKill(file, seed: round + 1, minLines: 2000 + rng.Next(3000), extraMs: rng.Next(0, 40));
            int w = 0, f = 0;
            foreach (var line in lines)
            {
                var p = line.Split(' ');
                long slot = long.Parse(p[1], CultureInfo.InvariantCulture);
                switch (p[0])
                {
                    case "P":
                        pending[slot] = (long.Parse(p[2], CultureInfo.InvariantCulture), uint.Parse(p[3], CultureInfo.InvariantCulture));
                        break;
                    case "W":
                        pending.Remove(slot);
                        live[slot] = (long.Parse(p[2], CultureInfo.InvariantCulture), uint.Parse(p[3], CultureInfo.InvariantCulture));
                        maybe.Remove(slot);
                        w++;
                        break;
                    case "f":
                        maybe[slot] = live[slot];
                        live.Remove(slot);
                        break;
                    case "F":
                        maybe.Remove(slot);
                        f++;
                        break;
                }
            }
            output.WriteLine($"round {round}: {w} pages and {f} frees reported, torn last line: {torn}, live {live.Count}, free in flight {maybe.Count}");
            Assert.True(w > 1000);

            using (var c = Pages.Plain(file))
                Assert.Equal("ok", Pages.Scalar(c, "PRAGMA integrity_check"));

            using var store = SwapStore.Open(file);
            var buf = new byte[SwapStore.PageBytes];
            var expect = new byte[SwapStore.PageBytes];
            var missing = live.Where(kv => store.GetState(kv.Key) != SwapSlotState.Used).Select(kv => kv.Key).ToList();
            Assert.True(missing.Count == 0, $"round {round}: {missing.Count} reported slots not in the store, e.g. " +
                string.Join(", ", missing.Take(5).Select(m => $"{m} (line {lines.FindLastIndex(l => l.StartsWith($"W {m} ", StringComparison.Ordinal))} of {lines.Count})")));
            // A rewrite in flight at the kill: the slot holds either its last reported page or the
            // announced one (the cluster committed before its report went out); the latter is now live.
            foreach (var (slot, next) in pending)
                if (live.ContainsKey(slot) && store.Read(slot, buf) == SwapReadResult.Ok && Crc32C.SlotChecksum(slot, buf) == next.crc)
                    live[slot] = next;
            pending.Clear();
            foreach (var (slot, (gen, crc)) in live)
            {
                Assert.Equal(SwapReadResult.Ok, store.Read(slot, buf));
                Assert.Equal(crc, Crc32C.SlotChecksum(slot, buf));
                Pages.Fill(expect, slot, gen);
                Assert.True(expect.AsSpan().SequenceEqual(buf), $"slot {slot} gen {gen}");
            }
            // A free in flight at the kill: the page is either gone or intact.
            foreach (var (slot, (gen, crc)) in maybe)
            {
                var r = store.Read(slot, buf);
                Assert.True(r == SwapReadResult.Missing || (r == SwapReadResult.Ok && Crc32C.SlotChecksum(slot, buf) == crc), $"slot {slot}: {r}");
                if (r == SwapReadResult.Ok) live[slot] = (gen, crc); // survived: later children never touch it
            }
            maybe.Clear();
            // Pages committed but not yet reported when the kill came are allowed; they must verify too.
            for (long s = 1; s < store.HighWaterMark; s++)
                Assert.NotEqual(SwapReadResult.Corrupt, store.Read(s, buf));
            Assert.Equal(0, store.Counters.BadSlots);
            Assert.True(store.Counters.SlotsUsed >= live.Count);
        }
    }

    static (List<string> lines, bool torn) RunAndKill(string file, int seed, int minLines, int extraMs)
    {
        string dll = typeof(Program).Assembly.Location;
        var psi = new ProcessStartInfo(DotnetHost(), ["exec", dll, "writer", file, seed.ToString(CultureInfo.InvariantCulture)])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        using var child = Process.Start(psi)!;
        var stderrTask = child.StandardError.ReadToEndAsync();
        var lines = new List<string>();
        bool torn = false, killed = false;
        int reports = 0;
        var deadline = Stopwatch.StartNew();
        string? line;
        while ((line = child.StandardOutput.ReadLine()) != null)
        {
            if (!line.EndsWith(" .", StringComparison.Ordinal)) { torn = true; continue; }
            if (line != "READY .") lines.Add(line[..^2]);
            if (!line.StartsWith("P ", StringComparison.Ordinal)) reports++;   // announcements do not count
            if (!killed && (reports >= minLines || deadline.Elapsed > TimeSpan.FromSeconds(60)))
            {
                Thread.Sleep(extraMs); // land the kill at an arbitrary point of a later cluster
                Assert.Equal(0, Pages.Kill(child.Id, Pages.SIGKILL));
                killed = true;
            }
        }
        child.WaitForExit();
        Assert.True(killed, "writer exited by itself: " + stderrTask.Result);
        Assert.Equal(137, child.ExitCode); // 128 + SIGKILL
        return (lines, torn);
    }

    static string DotnetHost()
    {
        // The dotnet CLI tells its children where the host is; fall back to PATH.
        string? host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
        if (!string.IsNullOrEmpty(host) && File.Exists(host)) return host;
        string? self = Environment.ProcessPath;
        if (self != null && Path.GetFileNameWithoutExtension(self) == "dotnet") return self;
        return "dotnet";
    }
}
