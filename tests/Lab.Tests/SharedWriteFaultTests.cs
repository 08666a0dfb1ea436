using System.Diagnostics;
using System.Reflection;

namespace Lab.Tests;

/// <summary>
/// A write to a page of a writable MAP_SHARED lab mapping that the design entered read-only
/// faults again under `lab run` (issue 11, deliver 3): the shim registers shared ranges for
/// write protection too and the daemon maps such a page with UFFDIO_CONTINUE_MODE_WP. A real
/// program (tests/progs/sharedwp.c) reads page 8 of a warm 32-page file, then writes page 8
/// ("readwrite") or page 9, a neighbour the read mapped ("readnext"). The counters of that run
/// minus those of a run that maps the file and touches nothing are exactly the seed's. Seeds:
/// 000 FreeBSD vm_fault.c, 001 NetBSD uvm_fault.c 1.48.4.1 (2000), 002 DragonFly vm_fault.c,
/// 003 NetBSD uvm_fault.c 1.208 (2019); line numbers are the listings' source line numbers.
/// </summary>
public sealed class SharedWriteFaultTests
{
    const int Pages = 32, Page = 8;

    // FreeBSD. The read: v_vm_faults (000: 299); a writable entry of a vnode object not yet
    // might-be-dirty skips the soft fast path (357–366); the page is resident, no pager call;
    // entered with the entry's prot, writable (957; prot is masked only below the first object,
    // 872), which makes the object might-be-dirty (940, 196); prefault 4 behind 4 ahead
    // (faultcount 0: PFBAK/PFFOR, 961–963; 108–109), read-only (pmap_enter_quick, outside the
    // seed); ru_minflt (1006). The write to the same page: no fault.
    static readonly (string, long)[] FreeBsdRead =
    {
        ("fault_count", 1), ("v_vm_faults", 1), ("chain_walk_1", 1), ("pages_installed", 9), ("pages_prefaulted", 8),
        ("ru_minflt", 1),
    };
    // The write to page 9, prefaulted read-only: a fault (299) that takes the soft fast path now
    // (the object is might-be-dirty, 357–360; the page resident and valid, 367–371), enters the
    // page writable (372: wp_resolved), prefaults 4/4 from page 9 (387: only page 13 is new)
    // and counts ru_minflt (389).
    static readonly (string, long)[] FreeBsdNextWrite =
    {
        ("fault_count", 1), ("v_vm_faults", 1), ("chain_walk_1", 1), ("fastpath_hits", 1), ("wp_resolved", 1),
        ("pages_installed", 1), ("pages_prefaulted", 1), ("ru_minflt", 1),
    };

    // DragonFly. The read: v_vm_faults (002: 221); the page is resident in the first object;
    // entered with fs.prot, writable for a shared first-object page (365); pmap_prefault (368,
    // machine-dependent: the lab's 4/4, read-only, lab/Vm/README.md); ru_minflt (394).
    static readonly (string, long)[] DragonFlyRead =
    {
        ("fault_count", 1), ("v_vm_faults", 1), ("chain_walk_1", 1), ("pages_installed", 9), ("pages_prefaulted", 8),
        ("ru_minflt", 1),
    };
    // The write to page 9: a fault (221), dirtied and entered writable (997–1027, 365:
    // wp_resolved), pmap_prefault from page 9 (368: page 13 is new), ru_minflt (394).
    static readonly (string, long)[] DragonFlyNextWrite =
    {
        ("fault_count", 1), ("v_vm_faults", 1), ("chain_walk_1", 1), ("wp_resolved", 1),
        ("pages_installed", 1), ("pages_prefaulted", 1), ("ru_minflt", 1),
    };

    // UVM, the read (both years): uvmexp.faults (001: 589; 003: 838 cpu_nfault); a locked get
    // (001: 930; 003: 1785) finds the page resident: ru_minflt (001: 1368; 003: 1728); the
    // neighbours, 3 behind 4 ahead under NORMAL advice (001: 171–172; 003: 159–160), fltnomap
    // each (001: 993; 003: 1859); case 2A, flt_obj (001: 1513; 003: 2052).
    static readonly (string, long)[] UvmRead =
    {
        ("fault_count", 1), ("v_vm_faults", 1), ("faults", 1), ("fltlget", 1), ("fltnomap", 7), ("flt_obj", 1),
        ("pages_installed", 8), ("pages_prefaulted", 7), ("ru_minflt", 1),
    };
    // 2019's write to a page entered read-only (the centre, 003: 2053–2055, or a neighbour,
    // 1823–1825: the clean vnode object needs write faults): a fault (838), a locked get (1785),
    // resident (1728), 2A again (2052), now writable: wp_resolved. Its neighbours are mapped
    // already (skipped, 1199) but for page 13 when the write is to page 9.
    static (string, long)[] Uvm2019Write(int newNeighbours) => new[]
    {
        ("fault_count", 1L), ("v_vm_faults", 1L), ("faults", 1L), ("fltlget", 1L), ("flt_obj", 1L), ("wp_resolved", 1L),
        ("ru_minflt", 1L), ("fltnomap", (long)newNeighbours), ("pages_installed", (long)newNeighbours),
        ("pages_prefaulted", (long)newNeighbours),
    };

    public static TheoryData<string, string, string> Cases => new()
    {
        // design, mode, what the seed gives
        { "freebsd", "readwrite", "1 fault: the centre is entered writable (000: 957)" },
        { "freebsd", "readnext", "2 faults: the neighbour was prefaulted read-only" },
        { "dragonfly", "readwrite", "1 fault: the centre is entered writable (002: 365)" },
        { "dragonfly", "readnext", "2 faults: the neighbour was prefaulted read-only" },
        { "uvm2000", "readwrite", "1 fault: 2A is writable but in a COW entry (001: 1502–1510)" },
        { "uvm2000", "readnext", "1 fault: neighbours entered with enter_prot & MASK, writable (001: 1000–1004)" },
        { "uvm2019", "readwrite", "2 faults: a clean vnode's 2A page is entered read-only (003: 2053–2055)" },
        { "uvm2019", "readnext", "2 faults: its neighbours too (003: 1823–1825)" },
    };

    static (string, long)[] Expected(string vm, string mode)
    {
        bool next = mode == "readnext";
        return vm switch
        {
            "freebsd" => next ? Sum(FreeBsdRead, FreeBsdNextWrite) : FreeBsdRead,
            "dragonfly" => next ? Sum(DragonFlyRead, DragonFlyNextWrite) : DragonFlyRead,
            "uvm2000" => UvmRead,
            "uvm2019" => Sum(UvmRead, Uvm2019Write(next ? 1 : 0)),
            _ => throw new ArgumentException(vm),
        };
    }

    static (string, long)[] Sum(params (string, long)[][] parts) =>
        parts.SelectMany(p => p).GroupBy(x => x.Item1).Select(g => (g.Key, g.Sum(x => x.Item2))).ToArray();

    // Every VM counter (a max is not a delta), and the daemon's count of the run's uffd faults.
    static readonly string[] Compared = typeof(global::Lab.Vm.VmCounters)
        .GetFields(BindingFlags.Public | BindingFlags.Instance)
        .Where(f => f.FieldType == typeof(long) && f.Name != "chain_depth_max")
        .Select(f => f.Name).Append("fault_count").ToArray();

    [KernelTheory, MemberData(nameof(Cases))]
    public void WarmSharedPage_ReadThenWrite_FaultsAsTheSeed(string vm, string mode, string why)
    {
        using var m = new LabMount(vm);
        var data = new byte[Pages * 4096];
        for (int i = 0; i < Pages; i++) data.AsSpan(i * 4096, 4096).Fill((byte)(i + 1));
        File.WriteAllBytes(m.B("f"), data);
        // A run that lasts the whole test, so the daemon's idle trim never drops the page cache
        // between the measured runs (each of which also warms the file before it maps it).
        var keeper = Keeper(m);
        try
        {
            var (b, cb) = m.RunCounted(Repo.Prog("sharedwp"), m.M("f"), "none", $"{Page}");
            Assert.True(b.ExitCode == 0 && b.Stdout.StartsWith("none "), b.ToString());
            var (r, c) = m.RunCounted(Repo.Prog("sharedwp"), m.M("f"), mode, $"{Page}");
            Assert.True(r.ExitCode == 0 && r.Stdout.StartsWith($"{Page + 1} "), r.ToString());

            var want = Expected(vm, mode).ToDictionary(x => x.Item1, x => x.Item2);
            var got = Compared.ToDictionary(n => n, n => LabMount.Get(c, n) - LabMount.Get(cb, n));
            var diff = Compared.Where(n => got[n] != want.GetValueOrDefault(n))
                .Select(n => $"{n}: got {got[n]}, seed {want.GetValueOrDefault(n)}").ToList();
            Assert.True(diff.Count == 0, $"{vm} {mode} ({why}):\n{string.Join("\n", diff)}\n{r.Stderr}\nbaseline:\n{b.Stderr}");
        }
        finally { Stop(keeper); }

        // The bytes written reach the file, and nothing else changed.
        var after = File.ReadAllBytes(m.B("f"));
        int written = mode == "readnext" ? Page + 1 : Page;
        data[written * 4096 + 7] = (byte)(mode == "readnext" ? 'N' : 'W');
        Assert.Equal(data, after);
    }

    static Process Keeper(LabMount m)
    {
        var psi = new ProcessStartInfo(Repo.Lab)
        {
            RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        foreach (var a in new[] { "run", "--mount", m.Mount, "--", Repo.Prog("sharedwp"), m.M("f"), "hold", "0" })
            psi.ArgumentList.Add(a);
        var p = Process.Start(psi)!;
        // Measured runs start once the keeper has filled the cache: their own warm-up is then
        // the same, all minor faults, in both.
        var line = p.StandardOutput.ReadLineAsync();
        if (!line.Wait(60_000) || line.Result?.StartsWith("warm ") != true)
        {
            Stop(p);
            throw new InvalidOperationException($"the keeper (lab run sharedwp hold) did not warm the file: {line.Status}");
        }
        return p;
    }

    static void Stop(Process keeper)
    {
        try { keeper.StandardInput.Close(); } catch (IOException) { }
        if (!keeper.WaitForExit(30_000)) { keeper.Kill(entireProcessTree: true); keeper.WaitForExit(10_000); }
        keeper.Dispose();
    }
}
