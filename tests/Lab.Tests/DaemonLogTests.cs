using Lab.Interop;
using Lab.Linux;

namespace Lab.Tests;

/// <summary>The stats name each counter once; the daemon's log says what went wrong, once per kind and then in sum.</summary>
public sealed class DaemonLogTests(ITestOutputHelper output)
{
    static string[] Duplicates(string text) =>
        text.Split('\n').Where(l => l.Length > 0 && !l.StartsWith('#'))
            .Select(l => l.Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries)[0])
            .GroupBy(n => n).Where(g => g.Count() > 1).Select(g => g.Key).ToArray();

    [KernelFact]
    public void Every_stats_text_names_each_counter_once()
    {
        // With swap, so the store's counters are there too.
        using var m = new LabMount("freebsd");
        var r = Sh.Lab("run", "--mount", m.Mount, "--resident-limit", "1M", "--stats", "--", Repo.Prog("swapcheck"), "1024", "touch");
        var c = LabMount.ParseCounters(r.Stderr);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.True(LabMount.Get(c, "pageins") > 0, r.Stderr);
        var raw = Sh.Lab("stat", "--mount", m.Mount, "--raw");
        Assert.True(raw.ExitCode == 0, raw.ToString());
        var file = File.ReadAllText(m.M(".lab/stats"));
        foreach (var (what, text) in new[] { ("lab stat --raw", raw.Stdout), (".lab/stats", file), ("lab run --stats", r.Stderr) })
        {
            output.WriteLine($"--- {what}\n{text}");
            Assert.True(Duplicates(text).Length == 0, $"{what} names twice: {string.Join(", ", Duplicates(text))}");
        }
        // (The --stats table leaves out zeros.)
        Assert.Contains("\ninternal_errors 0\n", raw.Stdout);
        Assert.Contains("\ninternal_errors 0\n", file);
        Assert.Contains("swap_store_bad_slots 0\n", raw.Stdout);
    }

    /// <summary>A mount whose log window is 3 s, so that a summary comes within the test (the default is a minute).</summary>
    static LabMount ShortLogWindowMount()
    {
        lock (typeof(DaemonLogTests))
        {
            Environment.SetEnvironmentVariable("LAB_LOG_WINDOW_MS", "3000");
            try { return new LabMount(); }
            finally { Environment.SetEnvironmentVariable("LAB_LOG_WINDOW_MS", null); }
        }
    }

    /// <summary>Waits until <paramref name="n"/> occurrences of a message are accounted for in the log:
    /// lines in full (starting with <paramref name="prefix"/>, ending with <paramref name="suffix"/>) plus
    /// the "N more like this" sums of it. Returns how many came in full.</summary>
    long AccountedFor(LabMount m, int n, string prefix, string suffix, string summaryOf)
    {
        var deadline = DateTime.UtcNow.AddSeconds(20);
        long full, summed;
        while (true)
        {
            var lines = m.DaemonLog.Split('\n');
            full = lines.Count(l => l.StartsWith(prefix) && l.EndsWith(suffix));
            summed = lines.Where(l => l.Contains(" more like this in the last 3000 ms: " + summaryOf))
                .Sum(l => long.Parse(l["lab: ".Length..].Split(' ')[0]));
            if (full + summed == n || DateTime.UtcNow > deadline) break;
            Thread.Sleep(200);
        }
        output.WriteLine(m.DaemonLog);
        Assert.Equal(n, full + summed);
        return full;
    }

    [KernelFact]
    public void A_repeated_error_is_logged_once_then_counted()
    {
        using (var m = ShortLogWindowMount())
        {
            const int N = 40;
            for (int i = 0; i < N; i++)
            {
                using var conn = ControlConnection.Connect(m.M(".lab/control"), out int e) ?? throw new InvalidOperationException($"connect: errno {e}");
                var frame = new byte[20];
                BitConverter.TryWriteBytes(frame.AsSpan(0), 999u);
                BitConverter.TryWriteBytes(frame.AsSpan(4), 4u);
                BitConverter.TryWriteBytes(frame.AsSpan(8), (uint)i);
                unsafe { fixed (byte* p = frame) Assert.Equal(frame.Length, (int)Native.Write(conn.Fd, p, (nuint)frame.Length)); }
                Assert.Null(conn.Receive());
            }
            // Every one is accounted for: lines in full, plus the "N more like this" sums.
            long full = AccountedFor(m, N, "lab: closing the control connection of pid ", "malformed message (type 999, 4 bytes)", "closing the control connection");
            Assert.InRange(full, 1, N / 4);
            Assert.Equal(0, m.DaemonLog.Split('\n').Count(l => l.Contains("more like this") && !l.Contains("closing the control connection")));
        }
    }

    [KernelFact]
    public void A_failed_file_system_operation_is_logged_by_operation_and_errno_and_an_answer_is_not()
    {
        using (var m = ShortLogWindowMount())
        {
            Directory.CreateDirectory(m.M("d"));
            File.WriteAllText(m.M("d/f"), "x");
            const int N = 30;
            for (int i = 0; i < N; i++)
            {
                // RMDIR of a directory that is not empty: ENOTEMPTY (39), a failed operation, N times.
                Assert.ThrowsAny<IOException>(() => Directory.Delete(m.M("d")));
                // A lookup of a name that is not there: an answer (ENOENT), never logged.
                Assert.False(File.Exists(m.M($"missing{i}")));
            }
            long full = AccountedFor(m, N, "lab: fuse: RMDIR on node 1 failed: ", "(errno 39)", "fuse: RMDIR on node 1 failed: ");
            Assert.InRange(full, 1, N / 3);
            Assert.DoesNotContain("LOOKUP", m.DaemonLog);
        }
    }
}
