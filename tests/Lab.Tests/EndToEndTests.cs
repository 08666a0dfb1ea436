namespace Lab.Tests;

/// <summary>Real mounts, real userfaultfd, unmodified programs under `lab run`.</summary>
public sealed class EndToEndTests(ITestOutputHelper output)
{
    const int Page = 4096;

    static byte[] Pattern(int mul, int add, int length = 4 * Page)
    {
        var b = new byte[length];
        for (int i = 0; i < length; i++) b[i] = (byte)(i * mul + add);
        return b;
    }

    internal static void AssertOk(RunResult r, ITestOutputHelper output, LabMount m)
    {
        output.WriteLine(r.ToString());
        if (r.ExitCode != 0) output.WriteLine("--- daemon\n" + m.DaemonLog);
        Assert.True(r.ExitCode == 0, r.ToString());
    }

    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void CProgramMapsPrivateAndSharedReadsWritesForks(string vm)
    {
        using var m = new LabMount(vm);
        var priv = Pattern(7, 3);
        var shared = Pattern(13, 5);
        File.WriteAllBytes(m.B("priv.dat"), priv);
        File.WriteAllBytes(m.B("shared.dat"), shared);

        var (r, c) = m.RunCounted(Repo.Prog("mmapcheck"), m.M("priv.dat"), m.M("shared.dat"));
        AssertOk(r, output, m);
        Assert.Contains("p_read=ok", r.Stdout);
        Assert.Contains("fork=ok", r.Stdout);
        Assert.Contains("done=ok", r.Stdout);

        // Private writes never reach the file.
        Assert.Equal(priv, File.ReadAllBytes(m.B("priv.dat")));
        // Shared writes do, after msync/munmap: parent's "shared-write" on page 2, the child's 'c' on page 3.
        var expect = (byte[])shared.Clone();
        "shared-write"u8.CopyTo(expect.AsSpan(2 * Page));
        expect[3 * Page] = (byte)'c';
        Assert.Equal(expect, File.ReadAllBytes(m.B("shared.dat")));
        // And the mount shows the same bytes as the backing file.
        Assert.Equal(expect, File.ReadAllBytes(m.M("shared.dat")));

        output.WriteLine(string.Join("\n", c.Select(kv => $"{kv.Key} {kv.Value}")));
        foreach (var (name, value) in ExpectedCounters(vm))
            Assert.True(LabMount.Get(c, name) == value, $"{vm}: {name} = {LabMount.Get(c, name)}, expected {value}");

        // Both processes are gone: every object and anon the model made for them is freed.
        var after = LabMount.ParseCounters(Sh.Lab("stat", "--mount", m.Mount, "--raw").Stdout);
        Assert.Equal(0, LabMount.Get(after, "processes_alive"));
        Assert.True(after.ContainsKey("objects_alive"), "stat prints objects_alive");
        Assert.Equal(0, LabMount.Get(after, "objects_alive"));
        Assert.Equal(0, LabMount.Get(after, "anons_alive"));
        Assert.Equal(2, LabMount.Get(c, "processes"));
        Assert.Equal(0, LabMount.Get(c, "lookup_miss"));
        Assert.Equal(0, LabMount.Get(c, "internal_errors"));
    }

    /// <summary>
    /// What mmapcheck's steps must cost under each design, on a cold mount (4-page files).
    /// </summary>
    static (string, long)[] ExpectedCounters(string vm) => vm switch
    {
        // Shadow chains. 1 read p page 0: pager I/O reads the 4 pages (read-ahead) into the vnode
        // object; page 0 installed read-only (copy-on-write pending), pages 1-3 prefaulted
        // read-only, so the read of page 2 takes no fault. 2, 3 write p pages 1, 2: write-protect
        // faults, the first makes the shadow S, both copy up (2 COW). 4 read s page 0: pager I/O
        // into the page cache (memfd), pages 1-3 prefaulted read-only (pmap_enter_quick; 000:
        // 961–963; 002: 368), so the write of s page 2 is a write-protect fault on a resident page,
        // no I/O, that enters it writable (000: 299, 372; 002: 221, 365). Fork (the shim write-protects p first). 5 child write p page 1: child shadow over the
        // shared S: copy. 6 child write s page 3: the child's pmap has none of the shared entry's
        // pages (only private installed pages are copied at fork, as Linux copies them), so a
        // fault on a resident vnode page, no I/O, prefaulting the other 3. 7 parent write p
        // page 2 while the child lives: copy. The reap frees the child's shadow; S is left with
        // one reference and one shadow and collapses into the parent's shadow (page 1 moves
        // up). 8 parent write p page 1: the page is in the first object now, so no
        // copy-on-write at all, only the write permission. (The parent's read of s page 3 finds
        // the page it prefaulted at step 4.)
        "freebsd" or "dragonfly" => new[]
        {
            ("v_vm_faults", 9L), ("v_io_faults", 2L), ("v_cow_faults", 4L), ("v_cow_optim", 0L), ("collapses", 1L),
            ("shadows_created", 3L), ("v_zfod", 0L), ("processes", 2L), ("lookup_miss", 0L), ("internal_errors", 0L),
        },
        // Amaps over the vnode object; the pager reads only the faulting page and neighbours are
        // mapped only if resident. p0, p2 reads: 2A (flt_obj) with I/O each. p1 write: needs_copy →
        // amap copy + refault, 2B copy from the file page (I/O). p2 write (installed read-only):
        // 2B copy. s0 read, s2 write: 2A with I/O each (page 2 was not in the cache). Child: p1
        // write → its own amap copy, anon shared (an_ref 2): 1B; s3 write: 2A with I/O, mapping
        // the resident neighbours 0 and 2 (fltnomap 2). Parent: p2 write → amap copy, 1B; after
        // the reap p1's anon has an_ref 1: 1A in place; the read of s3, a page the child's fault
        // brought into the object and the parent never mapped: 2A without I/O.
        "uvm2000" or "uvm2019" => new[]
        {
            ("faults", 11L), ("v_io_faults", 6L), ("fltamcopy", 3L), ("flt_obj", 6L), ("flt_prcopy", 2L),
            ("flt_acow", 2L), ("flt_anon", 1L), ("flt_przero", 0L), ("fltnomap", 2L),
            ("processes", 2L), ("lookup_miss", 0L), ("internal_errors", 0L),
        },
        _ => throw new ArgumentException($"no expectations written for design {vm}"),
    };

    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void AnonymousMemoryIsZeroFilledByTheLab(string vm)
    {
        using var m = new LabMount(vm);
        var (r, c) = m.RunCounted(Repo.Prog("mmapcheck"), "--anon", "64");
        AssertOk(r, output, m);
        Assert.Contains("anon=ok", r.Stdout);
        // Each of the 64 pages: one read fault (zero-fill), then the write of the index.
        Assert.Equal(64, LabMount.Get(c, vm.StartsWith("uvm") ? "flt_przero" : "v_zfod"));
        Assert.Equal(64, LabMount.Get(c, "v_vm_faults"));
        Assert.Equal(0, LabMount.Get(c, "v_io_faults"));
        Assert.Equal(0, LabMount.Get(c, "lookup_miss"));
    }

    const string PythonScript = """
        import mmap, os, sys
        priv, shared = sys.argv[1], sys.argv[2]
        with open(priv, "rb") as f:
            p = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        with open(shared, "r+b") as f:
            s = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        before = bytes(p[0:16])
        assert before == open(priv, "rb").read(16), "private read differs from the file"
        p[0:5] = b"PRIVX"
        s[100:106] = b"SHARED"
        pid = os.fork()
        if pid == 0:
            p[0:5] = b"CHILD"
            s[200:205] = b"CHILD"
            assert bytes(s[100:106]) == b"SHARED"
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert status == 0, status
        assert bytes(p[0:5]) == b"PRIVX", "the child's private write leaked into the parent"
        assert bytes(s[200:205]) == b"CHILD", "the child's shared write is not visible"
        with open(shared, "rb") as f:
            assert f.read()[100:106] == b"SHARED", "read(2) through the mount does not see the mapping"
        s.flush()
        s.close(); p.close()
        print("python=ok")
        """;

    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void PythonMapsReadsWritesAndForks(string vm)
    {
        using var m = new LabMount(vm);
        var priv = Pattern(7, 3, 3 * Page + 100);
        var shared = Pattern(13, 5, 2 * Page);
        File.WriteAllBytes(m.B("p.bin"), priv);
        File.WriteAllBytes(m.B("s.bin"), shared);
        File.WriteAllText(m.B("check.py"), PythonScript.Replace("\n        ", "\n"));
        var (r, c) = m.RunCounted(Repo.Python, m.M("check.py"), m.M("p.bin"), m.M("s.bin"));
        AssertOk(r, output, m);
        Assert.Contains("python=ok", r.Stdout);
        Assert.Equal(priv, File.ReadAllBytes(m.B("p.bin")));
        var expect = (byte[])shared.Clone();
        "SHARED"u8.CopyTo(expect.AsSpan(100));
        "CHILD"u8.CopyTo(expect.AsSpan(200));
        Assert.Equal(expect, File.ReadAllBytes(m.B("s.bin")));
        long cow = vm.StartsWith("uvm") ? LabMount.Get(c, "flt_acow") + LabMount.Get(c, "flt_prcopy") : LabMount.Get(c, "v_cow_faults");
        Assert.True(cow >= 2, "parent and child private writes are copy-on-write faults");
        Assert.Equal(2, LabMount.Get(c, "processes"));
        Assert.Equal(0, LabMount.Get(c, "lookup_miss"));
        Assert.Equal(0, LabMount.Get(c, "internal_errors"));
    }

    [KernelFact]
    public void KilledDaemonEndsAWaitingProgramWithAMessage()
    {
        using var m = new LabMount();
        File.WriteAllBytes(m.B("f.dat"), Pattern(3, 1));
        var psi = new System.Diagnostics.ProcessStartInfo(Repo.Lab)
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        foreach (var a in new[] { "run", "--mount", m.Mount, "--", Repo.Prog("mmapcheck"), "--wait-fault", m.M("f.dat") })
            psi.ArgumentList.Add(a);
        psi.Environment["LAB_PRELOAD"] = Repo.Shim;
        using var p = System.Diagnostics.Process.Start(psi)!;
        try
        {
            var err = p.StandardError.ReadToEndAsync();
            Assert.Equal("waiting", p.StandardOutput.ReadLine());
            m.KillDaemon();
            Assert.True(p.WaitForExit(20_000), "the program hung after the daemon died");
            var rest = p.StandardOutput.ReadToEnd();
            output.WriteLine($"exit {p.ExitCode} stdout-rest '{rest}' stderr '{err.Result}'");
            Assert.Equal("", rest.Trim());                     // it never printed the byte
            Assert.NotEqual(0, p.ExitCode);
            Assert.Contains("lab: the lab daemon went away", err.Result);
        }
        finally
        {
            if (!p.HasExited) p.Kill(entireProcessTree: true);
        }
        // The dead daemon left a stale mount: `lab unmount` clears it.
        var u = Sh.Lab("unmount", m.Mount);
        Assert.True(u.ExitCode == 0, u.ToString());
        Assert.DoesNotContain(" " + m.Mount + " ", File.ReadAllText("/proc/self/mountinfo"));
    }

    [KernelFact]
    public void MountOverAStaleMountClearsIt()
    {
        using var m = new LabMount();
        File.WriteAllText(m.B("x.txt"), "still here\n");
        m.KillDaemon();                                    // leaves a dead FUSE mount behind
        var r = Sh.Lab("mount", m.Backing, m.Mount);       // background daemon this time
        int pid = 0;
        try
        {
            Assert.True(r.ExitCode == 0, r.ToString());
            pid = int.Parse(System.Text.RegularExpressions.Regex.Match(r.Stdout, @"daemon pid (\d+)").Groups[1].Value);
            Assert.Contains("cleared a stale mount", r.Stderr);
            Assert.Equal("still here\n", File.ReadAllText(m.M("x.txt")));
            var u = Sh.Lab("unmount", m.Mount);
            Assert.True(u.ExitCode == 0, u.ToString());
        }
        finally
        {
            if (pid > 0) { try { System.Diagnostics.Process.GetProcessById(pid).Kill(); } catch (ArgumentException) { } }
        }
    }

    [KernelFact]
    public void EverydayToolsWorkOnTheMountAndStatsAreThere()
    {
        using var m = new LabMount();
        var r = Sh.Bash($"""
            set -e
            cd '{m.Mount}'
            echo hello > a.txt
            echo world >> a.txt
            mkdir d
            cp a.txt d/b.txt
            mv d/b.txt d/c.txt
            truncate -s 3 d/c.txt
            cat a.txt d/c.txt
            ls -l d | grep -c c.txt
            stat -c %s a.txt
            rm d/c.txt
            rmdir d
            df . > /dev/null
            """);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal("hello\nworld\nhel1\n12\n", r.Stdout);
        Assert.Equal("hello\nworld\n", File.ReadAllText(m.B("a.txt")));
        Assert.False(Directory.Exists(m.B("d")));
        var stats = File.ReadAllText(m.M(".lab/stats"));
        Assert.Contains("v_vm_faults ", stats);
        var s = Sh.Lab("stat", "--mount", m.Mount, "--raw");
        Assert.True(s.ExitCode == 0, s.ToString());
        Assert.Contains("v_cow_faults ", s.Stdout);
    }

    [KernelFact]
    public void UnmountWritesSharedPagesBack()
    {
        using var m = new LabMount();
        File.WriteAllBytes(m.B("s.bin"), new byte[Page]);
        // The program writes through a shared mapping and exits without msync or munmap.
        var r = m.Run(Repo.Python, "-c",
            $"import mmap; f=open('{m.M("s.bin")}','r+b'); s=mmap.mmap(f.fileno(),0); s[0:4]=b'DONE'; print('wrote')");
        AssertOk(r, output, m);
        var u = Sh.Lab("unmount", m.Mount);
        Assert.True(u.ExitCode == 0, u.ToString());
        Assert.True(m.Daemon.WaitForExit(20_000));
        Assert.Equal("DONE"u8.ToArray(), File.ReadAllBytes(m.B("s.bin"))[..4]);
    }

    [KernelFact]
    public void BadInputGetsOneLineAndNonZeroExit()
    {
        using var m = new LabMount();
        var notMount = m.Dir;
        var text = Path.Combine(m.Dir, "text.txt");
        File.WriteAllText(text, "not a database\n");
        var mp2 = Directory.CreateDirectory(Path.Combine(m.Dir, "mp2")).FullName;
        foreach (var (args, expect) in new (string[], string)[]
        {
            (new[] { "run", "--mount", m.Mount, "--resident-limit", "lots", "--", "true" }, "is not a size"),
            (new[] { "run", "--mount", m.Mount, "--resident-limit", "4K", "--", "true" }, "at least 256K"),
            (new[] { "mount", "--memory", "12Q", m.Backing, mp2 }, "is not a size"),
            (new[] { "mount", "--swap", text, m.Backing, mp2 }, "not a swap store"),
            (new[] { "swap", "inspect", "--verify", Path.Combine(m.Dir, "none.db") }, "no such file"),
            (new[] { "run", "--mount", notMount, "--", "true" }, "is not a lab mount"),
            (new[] { "run", "--mount", m.Mount, "--", "no-such-program-xyz" }, "command not found"),
            (new[] { "mount", Path.Combine(m.Dir, "nope"), m.Mount }, "does not exist"),
            (new[] { "mount", m.Backing, m.Mount }, "already"),
            (new[] { "run", "--mount", m.Mount, "--vm", "nosuch", "--", "true" }, "unknown --vm"),
            (new[] { "unmount", notMount }, "is not a lab mount"),
        })
        {
            var r = Sh.Lab(args);
            output.WriteLine($"lab {string.Join(' ', args)} -> {r}");
            Assert.NotEqual(0, r.ExitCode);
            Assert.Contains(expect, r.Stderr);
            Assert.DoesNotContain("   at ", r.Stderr);            // no stack trace
            Assert.Single(r.Stderr.Trim().Split('\n'));
        }
    }
}
