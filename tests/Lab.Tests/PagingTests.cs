using System.Diagnostics;
using System.Security.Cryptography;

namespace Lab.Tests;

/// <summary>
/// Pageout and the swap store end to end: unmodified programs with a working set far over
/// their resident limit, the daemon killed while paging, and a corrupted swap slot.
/// </summary>
public sealed class PagingTests(ITestOutputHelper output)
{
    const long Limit = 32L << 20;
    // What a program has besides its lab memory (binary, libraries, small heap): the RSS
    // sampled from /proc may exceed the limit by this much and no more.
    const long NonLabSlack = 24L << 20;

    /// <summary>A 300 MB file of 3,000,000 lines in descending order (made once per test run), and plain sort's digest of it.</summary>
    static readonly Lazy<(string Path, string Digest)> SortInput = new(() =>
    {
        var dir = Directory.CreateTempSubdirectory("labsort-").FullName;
        var path = Path.Combine(dir, "lines.txt");
        using (var w = new StreamWriter(path, false, new System.Text.UTF8Encoding(false), 1 << 20))
        {
            var pad = new string('x', 89);
            for (int i = 3_000_000; i > 0; i--) { w.Write(i.ToString("D9")); w.Write(' '); w.Write(pad); w.Write('\n'); }
        }
        var plain = Sh.Bash($"set -o pipefail; sort '{path}' | md5sum", 300_000);
        if (plain.ExitCode != 0) throw new InvalidOperationException(plain.ToString());
        AppDomain.CurrentDomain.ProcessExit += (_, _) => { try { Directory.Delete(dir, true); } catch (IOException) { } };
        return (path, plain.Stdout.Split(' ')[0]);
    });

    /// <summary>Builds ~260 MiB of small str objects (pymalloc arenas: lab memory), then hashes them in order.</summary>
    const string PythonProgram = """
        import hashlib
        N = 2_200_000
        data = [("%020d" % (i * 7919 % 10**9)) * 3 for i in range(N)]
        h = hashlib.sha256()
        for s in data:
            h.update(s.encode())
        print(len(data), h.hexdigest())
        """;

    static readonly Lazy<string> PythonPlain = new(() =>
    {
        var r = Sh.Run(Repo.Python, new[] { "-c", PythonProgram }, timeoutMs: 300_000);
        if (r.ExitCode != 0) throw new InvalidOperationException(r.ToString());
        return r.Stdout;
    });

    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void SortOf300MBUnder32MLimit_SameOutput_PagesOutAndIn_RssNearLimit(string vm)
    {
        var (input, digest) = SortInput.Value;
        using var m = new LabMount(vm);
        using var rss = new RssSampler(m, "sort");
        var r = Sh.Bash($"set -o pipefail; '{Repo.Lab}' run --mount '{m.Mount}' --resident-limit 32M --stats -- sort '{input}' | md5sum", 600_000);
        output.WriteLine(r.ToString());
        Assert.True(r.ExitCode == 0, r.ToString() + m.DaemonLog);
        Assert.Equal(digest, r.Stdout.Split(' ')[0]);
        CheckPaged(LabMount.ParseCounters(r.Stderr), rss, m);
    }

    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void PythonBuildingAndHashing260MiBUnder32MLimit_SameOutput_PagesOutAndIn_RssNearLimit(string vm)
    {
        var plain = PythonPlain.Value;
        using var m = new LabMount(vm);
        using var rss = new RssSampler(m, Path.GetFileName(Repo.Python));
        var r = Sh.Run(Repo.Lab, new[] { "run", "--mount", m.Mount, "--resident-limit", "32M", "--stats", "--", Repo.Python, "-c", PythonProgram },
            timeoutMs: 600_000);
        output.WriteLine(r.ToString());
        Assert.True(r.ExitCode == 0, r.ToString() + m.DaemonLog);
        Assert.Equal(plain, r.Stdout);
        CheckPaged(LabMount.ParseCounters(r.Stderr), rss, m);
    }

    void CheckPaged(Dictionary<string, long> c, RssSampler rss, LabMount m)
    {
        output.WriteLine($"max RSS sampled: {rss.MaxBytes >> 20} MiB over {rss.Samples} samples");
        Assert.Equal(Limit / 4096, LabMount.Get(c, "resident_limit_pages"));
        // The working set is several times the limit: most of it went out and came back.
        Assert.True(LabMount.Get(c, "pageouts") > 40_000, $"pageouts {LabMount.Get(c, "pageouts")}");
        Assert.True(LabMount.Get(c, "pageins") > 40_000, $"pageins {LabMount.Get(c, "pageins")}");
        Assert.Equal(0, LabMount.Get(c, "sigbus"));
        Assert.Equal(0, LabMount.Get(c, "internal_errors"));
        Assert.Equal(0, LabMount.Get(c, "lookup_miss"));
        Assert.True(rss.Samples >= 5, $"only {rss.Samples} RSS samples");
        Assert.True(rss.MaxBytes <= Limit + NonLabSlack, $"RSS reached {rss.MaxBytes >> 20} MiB (limit 32 MiB)\n{m.DaemonLog}");
        // Everything the program paged out was freed with it. The daemon tears a process down when its
        // descriptors close, after `lab run` has reaped it: on a loaded machine that took up to 12 s.
        var deadline = DateTime.UtcNow.AddSeconds(60);
        string stats;
        while (!(stats = Sh.Lab("stat", "--mount", m.Mount, "--raw").Stdout).Contains("\nprocesses_alive 0\n") && DateTime.UtcNow < deadline)
            Thread.Sleep(200);
        Assert.Contains("\nprocesses_alive 0\n", stats);
        Assert.Contains("\nswap_slots_in_use 0\n", stats);
    }

    /// <summary>Builds ~50 MiB of strings, forks; the child changes the list and hashes it, then the parent hashes its own.</summary>
    const string ForkProgram = """
        import hashlib, os
        data = [("%020d" % i) * 3 for i in range(400_000)]
        def digest():
            h = hashlib.sha256()
            for s in data: h.update(s.encode())
            return h.hexdigest()
        pid = os.fork()
        if pid == 0:
            data.append("child")
            print("child", digest(), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        print("parent", digest(), flush=True)
        """;

    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void ForkedPythonUnder16MLimit_ParentAndChildSeeTheirOwnData(string vm)
    {
        var plain = Sh.Run(Repo.Python, new[] { "-c", ForkProgram }, timeoutMs: 300_000);
        Assert.True(plain.ExitCode == 0, plain.ToString());
        using var m = new LabMount(vm);
        var r = Sh.Run(Repo.Lab, new[] { "run", "--mount", m.Mount, "--resident-limit", "16M", "--stats", "--", Repo.Python, "-c", ForkProgram },
            timeoutMs: 300_000);
        output.WriteLine(r.ToString());
        Assert.True(r.ExitCode == 0, r.ToString() + m.DaemonLog);
        Assert.Equal(plain.Stdout, r.Stdout);
        var c = LabMount.ParseCounters(r.Stderr);
        // Both processes' pages went out and came back (copy-on-write pages too: those the
        // agent cannot move are dropped in place).
        Assert.True(LabMount.Get(c, "pageouts") > 10_000, $"pageouts {LabMount.Get(c, "pageouts")}");
        Assert.True(LabMount.Get(c, "pageins") > 10_000, $"pageins {LabMount.Get(c, "pageins")}");
        Assert.Equal(2, LabMount.Get(c, "processes"));
        Assert.Equal(0, LabMount.Get(c, "sigbus") + LabMount.Get(c, "internal_errors") + LabMount.Get(c, "lookup_miss"));
    }

    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void KillingTheDaemonWhilePaging_ProgramEndsWithTheMessage_SwapFileIntact(string vm)
    {
        var swap = Path.Combine(Path.GetTempPath(), $"labswap-{Guid.NewGuid():N}.db");
        var m = new LabMount(vm, "--swap", swap);
        try
        {
            using var p = StartLab("run", "--mount", m.Mount, "--resident-limit", "4M", "--", Repo.Prog("swapcheck"), "8192", "loop");
            var err = p.StandardError.ReadToEndAsync();
            try
            {
                // Two passes over 32 MiB under a 4 MiB limit: pages are going out and coming back.
                string? line;
                int passes = 0;
                var deadline = DateTime.UtcNow.AddSeconds(120);
                while (passes < 2 && (line = ReadLine(p, deadline)) != null)
                    if (line.StartsWith("pass ")) passes++;
                Assert.True(passes == 2, "swapcheck did not get through two passes\n" + m.DaemonLog);
                m.KillDaemon();
                Assert.True(p.WaitForExit(30_000), "the program did not end after the daemon was killed");
                Assert.Equal(70, p.ExitCode);
                Assert.Contains("lab: the lab daemon went away", err.Result);
            }
            finally
            {
                if (!p.HasExited) { p.Kill(entireProcessTree: true); p.WaitForExit(); }
            }
            var check = Sh.Run("sqlite3", new[] { swap, "PRAGMA integrity_check; SELECT count(*) FROM slots;" });
            output.WriteLine(check.ToString());
            Assert.True(check.ExitCode == 0, check.ToString());
            var lines = check.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.Equal("ok", lines[0]);
            Assert.True(long.Parse(lines[1]) > 100, $"only {lines[1]} committed slots: paging was not heavy");
            // Every committed slot reads back with a valid checksum, and holds a page swapcheck wrote.
            var verify = Sh.Lab("swap", "inspect", "--verify", swap);
            output.WriteLine(verify.ToString());
            Assert.True(verify.ExitCode == 0, verify.ToString());
            Assert.Contains(" 0 failed their checksum", verify.Stdout);
            CheckSwapcheckPages(swap, 8192);
        }
        finally
        {
            m.Dispose();
            foreach (var f in new[] { swap, swap + "-wal", swap + "-shm" }) File.Delete(f);
        }
    }

    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void ACorruptSwapSlot_GivesSigbusOnExactlyThatPage(string vm)
    {
        var swap = Path.Combine(Path.GetTempPath(), $"labswap-{Guid.NewGuid():N}.db");
        var m = new LabMount(vm, "--swap", swap);
        try
        {
            using var p = StartLab("run", "--mount", m.Mount, "--resident-limit", "2M", "--stats", "--", Repo.Prog("swapcheck"), "4096", "check");
            var err = p.StandardError.ReadToEndAsync();
            try
            {
                var deadline = DateTime.UtcNow.AddSeconds(60);
                Assert.Equal("filled", ReadLine(p, deadline));
                // Wait for the pageout to bring the 16 MiB down to the 2 MiB limit.
                long rows = 0;
                while (DateTime.UtcNow < deadline && (rows = Rows(swap)) < 3000) Thread.Sleep(100);
                Assert.True(rows >= 3000, $"only {rows} pages paged out");
                // Take a slot in the middle and spoil one byte of it.
                var q = Sh.Run("sqlite3", new[] { "-cmd", ".timeout 5000", swap,
                    "SELECT slot, hex(substr(data, 1, 8)) FROM slots ORDER BY slot LIMIT 1 OFFSET 1000;" });
                Assert.True(q.ExitCode == 0, q.ToString());
                var parts = q.Stdout.Trim().Split('|');
                long slot = long.Parse(parts[0]);
                long page = BitConverter.ToInt64(Convert.FromHexString(parts[1]));   // swapcheck's first word is the page index
                Assert.InRange(page, 0, 4095);
                var u = Sh.Run("sqlite3", new[] { "-cmd", ".timeout 5000", swap,
                    $"UPDATE slots SET data = substr(data, 1, 100) || x'5A' || substr(data, 102) WHERE slot = {slot}; SELECT changes();" });
                Assert.True(u.ExitCode == 0 && u.Stdout.Trim() == "1", u.ToString());
                p.StandardInput.WriteLine("check");
                p.StandardInput.Flush();
                var outText = p.StandardOutput.ReadToEnd();
                Assert.True(p.WaitForExit(120_000), "swapcheck did not finish");
                output.WriteLine(outText + err.Result);
                Assert.Equal($"sigbus {page}\nchecked 4096 sigbus 1 bad 0\n", outText);
                Assert.Equal(0, p.ExitCode);
                var c = LabMount.ParseCounters(err.Result);
                Assert.Equal(1, LabMount.Get(c, "swap_bad_slots"));
                Assert.Equal(1, LabMount.Get(c, "sigbus"));
                Assert.True(LabMount.Get(c, "pageins") >= 3000);
            }
            finally
            {
                if (!p.HasExited) { p.Kill(entireProcessTree: true); p.WaitForExit(); }
            }
            // The store marked the slot bad, with the reason, for `lab swap inspect`.
            var inspect = Sh.Lab("swap", "inspect", swap);
            Assert.True(inspect.ExitCode == 0, inspect.ToString());
            Assert.Contains("bad slots: 1", inspect.Stdout);
        }
        finally
        {
            m.Dispose();
            foreach (var f in new[] { swap, swap + "-wal", swap + "-shm" }) File.Delete(f);
        }
    }

    [KernelFact]
    public void MountMemoryLimit_KeepsAllTheMountsProgramsUnderIt()
    {
        using var m = new LabMount("freebsd", "--memory", "8M");
        long maxResident = 0;
        bool stop = false;
        var sampler = new Thread(() =>
        {
            while (!Volatile.Read(ref stop))
            {
                try
                {
                    foreach (var line in File.ReadAllLines(m.M(".lab/stats")))
                        if (line.StartsWith("resident_pages ")) maxResident = Math.Max(maxResident, long.Parse(line[15..]));
                }
                catch (IOException) { }
                Thread.Sleep(20);
            }
        });
        sampler.Start();
        // Two programs at once, 16 MiB each: together four times the mount's budget.
        var sc = Repo.Prog("swapcheck");
        var r = m.Run("/bin/bash", "-c", $"'{sc}' 4096 touch & '{sc}' 4096 touch; wait");
        Volatile.Write(ref stop, true);
        sampler.Join();
        output.WriteLine(r.ToString());
        Assert.True(r.ExitCode == 0, r.ToString() + m.DaemonLog);
        Assert.Equal("ok\nok\n", r.Stdout);
        var c = LabMount.ParseCounters(Sh.Lab("stat", "--mount", m.Mount).Stdout);
        output.WriteLine($"max resident pages sampled: {maxResident}");
        Assert.Equal(2048, LabMount.Get(c, "resident_limit_pages"));
        Assert.True(LabMount.Get(c, "pageouts") >= 4096, $"pageouts {LabMount.Get(c, "pageouts")}");
        Assert.True(LabMount.Get(c, "pageins") >= 4096, $"pageins {LabMount.Get(c, "pageins")}");
        // The pageout runs every few ms and evicts in batches: allow it a batch or two per program over.
        Assert.InRange(maxResident, 1, 2048 + 2 * 256 + 512);
    }

    [KernelFact]
    public void DirtySharedFilePagesAreWrittenBackWhenPagedOut()
    {
        using var m = new LabMount();
        const int Pages = 4096;
        File.WriteAllBytes(m.B("f.bin"), new byte[Pages * 4096]);
        const string program = """
            import mmap, os, sys
            fd = os.open(sys.argv[1], os.O_RDWR)
            mm = mmap.mmap(fd, 4096 * 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            for i in range(4096):
                mm[i * 4096:(i + 1) * 4096] = (b"P%07d" % i) * 512
            print("written", flush=True)
            sys.stdin.readline()
            """;
        using var p = StartLab("run", "--mount", m.Mount, "--resident-limit", "4M", "--stats", "--", Repo.Python, "-c", program, m.M("f.bin"));
        var err = p.StandardError.ReadToEndAsync();
        const int Enough = Pages - 1024 - 512;   // all but the limit and a batch
        try
        {
            Assert.Equal("written", ReadLine(p, DateTime.UtcNow.AddSeconds(120)));
            // Still mapped, never msynced: what reached the backing file came from pageout.
            int onDisk = 0;
            var deadline = DateTime.UtcNow.AddSeconds(20);
            do
            {
                onDisk = PagesWritten(File.ReadAllBytes(m.B("f.bin")), Pages);
                if (onDisk >= Enough) break;
                Thread.Sleep(100);
            } while (DateTime.UtcNow < deadline);
            output.WriteLine($"{onDisk} of {Pages} pages written back before msync or exit");
            Assert.True(onDisk >= Enough, $"only {onDisk} pages written back\n{m.DaemonLog}");
            p.StandardInput.WriteLine();
            p.StandardInput.Flush();
            Assert.True(p.WaitForExit(60_000));
            Assert.True(p.ExitCode == 0, err.Result);
        }
        finally
        {
            if (!p.HasExited) { p.Kill(entireProcessTree: true); p.WaitForExit(); }
        }
        var c = LabMount.ParseCounters(Sh.Lab("stat", "--mount", m.Mount).Stdout);
        Assert.True(LabMount.Get(c, "pageout_shared_pages") >= Enough, $"pageout_shared_pages {LabMount.Get(c, "pageout_shared_pages")}");
        // At exit the rest followed: the whole file is the program's.
        Assert.Equal(Pages, PagesWritten(File.ReadAllBytes(m.B("f.bin")), Pages));
    }

    static int PagesWritten(byte[] bytes, int pages)
    {
        int n = 0;
        for (int i = 0; i < pages; i++)
            if (bytes.AsSpan(i * 4096, 8).SequenceEqual(System.Text.Encoding.ASCII.GetBytes($"P{i:D7}"))) n++;
        return n;
    }

    [KernelFact]
    public void WithoutSwap_DirtyPagesStay_AndTheProgramIsNotHeldBack()
    {
        using var m = new LabMount("freebsd", "--swap", "none");
        var r = Sh.Lab("run", "--mount", m.Mount, "--stats", "--resident-limit", "2M", "--", Repo.Prog("swapcheck"), "4096", "touch");
        var c = LabMount.ParseCounters(r.Stderr);
        output.WriteLine(r.ToString());
        Assert.True(r.ExitCode == 0, r.ToString() + m.DaemonLog);
        Assert.Equal("ok\n", r.Stdout);
        // Nothing to write dirty pages to: none went out, none came back, nothing was lost.
        Assert.Equal(0, LabMount.Get(c, "pageouts"));
        Assert.Equal(0, LabMount.Get(c, "pageins"));
        // The pageout found nothing it could take, so the faults did not wait for it (a few
        // may have, before it first found out).
        Assert.True(LabMount.Get(c, "faults_throttled") < 300, $"faults_throttled {LabMount.Get(c, "faults_throttled")}");
    }

    /// <summary>`lab ARGS` with every stream redirected, for a test that talks to the program while it runs.</summary>
    static Process StartLab(params string[] args)
    {
        var psi = new ProcessStartInfo(Repo.Lab)
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false,
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["LAB_PRELOAD"] = Repo.Shim;
        return Process.Start(psi)!;
    }

    static long Rows(string swap)
    {
        var r = Sh.Run("sqlite3", new[] { "-cmd", ".timeout 5000", swap, "SELECT count(*) FROM slots;" });
        return r.ExitCode == 0 && long.TryParse(r.Stdout.Trim(), out long n) ? n : 0;
    }

    static string? ReadLine(Process p, DateTime deadline)
    {
        var t = p.StandardOutput.ReadLineAsync();
        var left = deadline - DateTime.UtcNow;
        if (left <= TimeSpan.Zero || !t.Wait(left)) throw new TimeoutException("no output from the program in time");
        return t.Result;
    }

    /// <summary>Each stored page is one swapcheck wrote: word 0 names the page, the other words follow from it and a generation.</summary>
    static void CheckSwapcheckPages(string swap, int pages)
    {
        var r = Sh.Run("sqlite3", new[] { "-cmd", ".timeout 5000", swap, "SELECT hex(substr(data, 1, 16)) FROM slots;" });
        Assert.True(r.ExitCode == 0, r.ToString());
        foreach (var hex in r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var b = Convert.FromHexString(hex);
            ulong w0 = BitConverter.ToUInt64(b, 0), w1 = BitConverter.ToUInt64(b, 8);
            Assert.True(SwapcheckWordsAgree(w0, w1, pages), $"a stored page is not one swapcheck wrote: {hex}");
        }
    }

    // swapcheck (tests/progs/swapcheck.c), generation g: w[0] = i ^ g*K2, w[j] = (i*K1 ^ j) ^ g*K2.
    // So w0 ^ w1 = i ^ (i*K1 ^ 1) names i, and then w0 ^ i = g*K2 must be a small generation.
    const ulong K1 = 0x9E3779B97F4A7C15, K2 = 0xD6E8FEB86659FD93;

    static bool SwapcheckWordsAgree(ulong w0, ulong w1, int pages)
    {
        ulong k2inv = K2;   // K2 is odd: Newton's iteration gives its inverse mod 2^64
        for (int n = 0; n < 6; n++) k2inv *= 2 - K2 * k2inv;
        for (ulong i = 0; i < (ulong)pages; i++)
            if ((i ^ (i * K1 ^ 1)) == (w0 ^ w1) && (w0 ^ i) * k2inv < 100_000_000) return true;
        return false;
    }

    /// <summary>Samples VmRSS of the lab's live processes with a given name (from the mount's .lab/processes/) every 50 ms.</summary>
    sealed class RssSampler : IDisposable
    {
        readonly Thread _thread;
        volatile bool _stop;
        public long MaxBytes, Samples;

        public RssSampler(LabMount m, string comm)
        {
            var dir = Path.Combine(m.Mount, ".lab", "processes");
            _thread = new Thread(() =>
            {
                while (!_stop)
                {
                    try
                    {
                        foreach (var d in Directory.GetDirectories(dir))
                        {
                            var pid = Path.GetFileName(d);
                            var status = File.ReadAllText($"/proc/{pid}/status");
                            if (!status.Contains($"Name:\t{comm[..Math.Min(comm.Length, 15)]}\n")) continue;
                            foreach (var line in status.Split('\n'))
                                if (line.StartsWith("VmRSS:"))
                                {
                                    long kb = long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]);
                                    MaxBytes = Math.Max(MaxBytes, kb * 1024);
                                    Samples++;
                                }
                        }
                    }
                    catch (IOException) { }
                    catch (UnauthorizedAccessException) { }
                    Thread.Sleep(50);
                }
            }) { IsBackground = true };
            _thread.Start();
        }

        public void Dispose() { _stop = true; _thread.Join(); }
    }
}
