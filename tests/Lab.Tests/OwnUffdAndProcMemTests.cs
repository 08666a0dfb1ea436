using System.Text.RegularExpressions;

namespace Lab.Tests;

/// <summary>
/// Programs that use userfaultfd themselves (their registration wins over the lab's), and
/// programs that read and write their own memory through /proc/self/mem (FOLL_FORCE) and
/// process_vm_writev: the same bytes as a native run, in every design.
/// </summary>
public sealed class OwnUffdAndProcMemTests(ITestOutputHelper output)
{
    const string OwnUffdOutput = "anon: pages 16 faults 15 ok\nheap: faults N ok\nfile: Invalid argument\n";

    static byte[] Pattern(int n)
    {
        var b = new byte[n];
        for (int i = 0; i < n; i++) b[i] = (byte)(i * 13 + 1);
        return b;
    }

    /// <summary>
    /// The program natively (on the same FUSE mount, without the lab) and under the lab: both
    /// exit 0 and print <paramref name="expected"/>. Returns the lab run and its counters.
    /// </summary>
    (RunResult R, Dictionary<string, long> C) NativeThenLab(LabMount m, string prog, string expected, string nativeArg, string labArg)
    {
        var native = Sh.Run(Repo.Prog(prog), new[] { nativeArg });
        Assert.True(native.ExitCode == 0, native.ToString());
        Assert.Equal(expected, native.Stdout);

        var (r, c) = m.RunCounted(Repo.Prog(prog), labArg);
        output.WriteLine(r.ToString());
        Assert.True(r.ExitCode == 0, r.ToString() + m.DaemonLog);
        Assert.Equal(expected, r.Stdout);
        return (r, c);
    }

    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void AProgramsOwnUserfaultfdTakesItsRangesFromTheLab(string vm)
    {
        using var m = new LabMount(vm);
        File.WriteAllBytes(m.B("two.dat"), Pattern(4 * 4096));
        // Natively (on the same FUSE mount, without the lab) the program serves its own faults,
        // and the kernel refuses to register a FUSE file mapping.
        var (r, c) = NativeThenLab(m, "ownuffd", OwnUffdOutput, m.M("two.dat"), m.M("two.dat"));
        // Both ranges were lab memory (anonymous mmap, a malloc block of 2 MiB) and left it whole.
        long registered = long.Parse(Regex.Match(r.Stderr, @"registered (\d+)").Groups[1].Value);
        Assert.Equal(2, LabMount.Get(c, "uffd_released_ranges"));
        Assert.Equal(registered, LabMount.Get(c, "uffd_released_pages"));
        Assert.Equal(0, LabMount.Get(c, "lookup_miss"));
        Assert.Equal(0, LabMount.Get(c, "internal_errors"));
        // Logged once per process, not once per range.
        Assert.Single(Regex.Matches(m.DaemonLog, "with its own userfaultfd"));
        // The lab file mapping stayed lab memory and its file is untouched.
        Assert.Equal(Pattern(4 * 4096), File.ReadAllBytes(m.B("two.dat")));
    }

    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void PagesTheLabPagedOutComeBackBeforeTheRangeLeavesIt(string vm)
    {
        using var m = new LabMount(vm);
        // 32 MiB of written pages under an 8 MiB limit: most are in the swap store when the
        // program registers them with its own uffd. A program never sees swap: every page
        // must read its bytes, and none may reach the program's handler as missing.
        var r = Sh.Run(Repo.Lab, new[] { "run", "--mount", m.Mount, "--resident-limit", "8M", "--stats", "--",
            Repo.Prog("ownuffd"), "--paged", "8192" });
        output.WriteLine(r.ToString());
        var c = LabMount.ParseCounters(r.Stderr);
        Assert.True(r.ExitCode == 0, r.ToString() + m.DaemonLog);
        Assert.Equal("paged: out yes faults 0 ok\n", r.Stdout);
        long gone = long.Parse(Regex.Match(r.Stderr, @"not resident before registering: (\d+)").Groups[1].Value);
        Assert.True(LabMount.Get(c, "pageins") >= gone, $"pageins {LabMount.Get(c, "pageins")}, {gone} pages were out");
        Assert.Equal(1, LabMount.Get(c, "uffd_released_ranges"));
        Assert.Equal(8192, LabMount.Get(c, "uffd_released_pages"));
        Assert.Equal(0, LabMount.Get(c, "lookup_miss"));
        Assert.Equal(0, LabMount.Get(c, "internal_errors"));
    }

    const string ProcMemOutput = """
        anon-ro: ok
        anon-rw: ok
        file-private-ro: ok
        file-private-rw: ok
        file-shared-ro: ok (EIO)
        file-shared-ro: file unchanged
        file-shared-rw: ok
        file-shared-rw: file has the writes
        process_vm: ok

        """;

    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void WritesThroughProcSelfMemReachLabMemory(string vm)
    {
        using var m = new LabMount(vm);
        var (r, c) = NativeThenLab(m, "procmem", ProcMemOutput, m.M("native.dat"), m.M("lab.dat"));
        // The mappings were lab memory and the lab served them without a miss.
        Assert.True(LabMount.Get(c, "v_vm_faults") > 0, "no fault reached the lab");
        Assert.Equal(0, LabMount.Get(c, "lookup_miss"));
        Assert.Equal(0, LabMount.Get(c, "internal_errors"));
        // The program restored the file after its shared cases: byte i = (i * 7 + 3) & 0xff.
        var want = new byte[4 * 4096];
        for (int i = 0; i < want.Length; i++) want[i] = (byte)((i * 7 + 3) & 0xff);
        Assert.Equal(want, File.ReadAllBytes(m.B("lab.dat")));
    }

    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void AWriteThroughProcSelfMemCountsAsAWriteFault(string vm)
    {
        using var m = new LabMount(vm);
        // Eight fresh pages written directly, then through /proc/self/mem into a writable
        // and into a read-only mapping (FOLL_FORCE): the same faults, the same counters.
        var (direct, cd) = m.RunCounted(Repo.Prog("procmem"), "--pages", "direct");
        Assert.True(direct.ExitCode == 0 && direct.Stdout == "ok\n", direct.ToString() + m.DaemonLog);
        Assert.Equal(8, LabMount.Get(cd, "v_vm_faults"));
        Assert.Equal(8, LabMount.Get(cd, vm.StartsWith("uvm") ? "flt_przero" : "v_zfod"));
        foreach (var how in new[] { "mem-rw", "mem-ro" })
        {
            var (r, c) = m.RunCounted(Repo.Prog("procmem"), "--pages", how);
            Assert.True(r.ExitCode == 0 && r.Stdout == "ok\n", how + ": " + r.ToString() + m.DaemonLog);
            foreach (var name in cd.Keys.Union(c.Keys).Where(k => k.StartsWith("v_") || k.StartsWith("flt_")))
                Assert.True(LabMount.Get(cd, name) == LabMount.Get(c, name),
                    $"{how}: {name} {LabMount.Get(c, name)}, direct writes {LabMount.Get(cd, name)}");
            Assert.Equal(0, LabMount.Get(c, "lookup_miss"));
            Assert.Equal(0, LabMount.Get(c, "internal_errors"));
        }
    }
}
