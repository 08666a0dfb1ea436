namespace Lab.Tests;

/// <summary>
/// madvise, MAP_POPULATE, MAP_LOCKED and mlockall on lab memory reach the design
/// (tests/progs/advcheck). Counts are deltas against a run of the same program doing nothing
/// (step "nop") on a file of the same size, so memory the program has besides the steps does not
/// enter them; every run gets a fresh file, so every run starts from the same cold cache.
/// </summary>
public sealed class AdviceTests(ITestOutputHelper output)
{
    static readonly string Prog = Repo.Prog("advcheck");

    static void MakeFile(string path, int pages)
    {
        var bytes = new byte[pages * 4096];
        new Random(pages).NextBytes(bytes);
        File.WriteAllBytes(path, bytes);
    }

    /// <summary>`lab run --stats advcheck FILE PAGES steps...` on a fresh file; its stdout and counters.</summary>
    (RunResult R, Dictionary<string, long> C) Run(LabMount m, int pages, string[] extra, params string[] steps) =>
        Run(m, pages, extra, null, steps);

    (RunResult R, Dictionary<string, long> C) Run(LabMount m, int pages, string[] extra, Dictionary<string, string>? env, params string[] steps)
    {
        string name = $"f{Guid.NewGuid():N}";
        MakeFile(m.B(name), pages);
        var args = new List<string> { "run", "--mount", m.Mount, "--stats" };
        args.AddRange(extra);
        args.Add("--");
        args.Add(Prog);
        args.Add(m.M(name));
        args.Add(pages.ToString());
        args.AddRange(steps);
        var r = Sh.Run(Repo.Lab, args, env, timeoutMs: 60_000);
        output.WriteLine(string.Join(' ', steps) + ": " + r);
        Assert.True(r.ExitCode == 0, r.ToString() + m.DaemonLog);
        var c = LabMount.ParseCounters(r.Stderr);
        Assert.Equal(0, LabMount.Get(c, "sigbus") + LabMount.Get(c, "internal_errors") + LabMount.Get(c, "lookup_miss"));
        return (r, c);
    }

    static RunResult Native(string dir, int pages, params string[] steps)
    {
        string f = Path.Combine(dir, $"native{pages}");
        MakeFile(f, pages);
        var r = Sh.Run(Prog, new[] { f, pages.ToString() }.Concat(steps));
        Assert.True(r.ExitCode == 0, r.ToString());
        return r;
    }

    static long D(Dictionary<string, long> with, Dictionary<string, long> without, string name) =>
        LabMount.Get(with, name) - LabMount.Get(without, name);

    /// <summary>
    /// uvm2000 (seed 001): a read scan of a warm 200-page private file mapping. The window is
    /// uvmadvice[] (001: 171–175; NORMAL 3 back / 4 forward, RANDOM 0/0, SEQUENTIAL 8/7), clipped
    /// to the entry on the first pass (721–751); the resident object pages of the window other
    /// than the centre are mapped by the PGO_LOCKED get (930–936) and counted fltnomap (993–1004);
    /// SEQUENTIAL first flushes the back pages and forgets them (779–799). So a scan faults every
    /// 1 + 4 pages under NORMAL (200 / 5 = 40 faults, 160 neighbours), every 1 + 7 pages under
    /// SEQUENTIAL (25 faults, 175 neighbours; each fault after the first deactivates the 8
    /// resident pages behind it: 24 × 8 = 192), and every page under RANDOM (200, none). The
    /// "warm" scan before (the same in every run) makes the object pages resident.
    /// </summary>
    [KernelFact]
    public void Uvm2000_AdvisedScans_TakeTheAdviceWindowsFaults()
    {
        const int pages = 200;
        using var m = new LabMount("uvm2000");
        var (_, warm) = Run(m, pages, [], "warm");
        var native = Native(m.Dir, pages, "warm", "normal", "sequential", "random");
        foreach (var (advice, faults, nomap, behind) in new[] { ("normal", 40L, 160L, 0L), ("sequential", 25L, 175L, 192L), ("random", 200L, 0L, 0L) })
        {
            var (r, c) = Run(m, pages, [], "warm", advice);
            Assert.Contains(native.Stdout.Split('\n').First(l => l.StartsWith(advice + " ")), r.Stdout);
            Assert.True(faults == D(c, warm, "faults"), $"{advice}: {D(c, warm, "faults")} faults, the seed's window gives {faults}");
            Assert.Equal(nomap, D(c, warm, "fltnomap"));
            Assert.Equal(behind, D(c, warm, "behind_deactivated"));
            Assert.Equal(0, D(c, warm, "fltget"));   // every page is resident: no pager get
            Assert.Equal(pages, D(c, warm, "pages_installed"));
        }
    }

    /// <summary>
    /// The Mach designs: a cold read scan of a 200-page private file mapping under MADV_RANDOM
    /// reads every page alone, so every page is a fault with its own pager call and no
    /// neighbour is mapped: RANDOM sets behind = ahead = 0 (FreeBSD 000: 558–562; DragonFly 002:
    /// 638–640), and FreeBSD prefaults nothing after a single-page read (000: 959–963); the lab's
    /// DragonFly prefault finds no resident neighbour ahead, and those behind are mapped already.
    /// Without the advice the same scan reads ahead and takes a few faults only.
    /// </summary>
    [KernelTheory, InlineData("freebsd"), InlineData("dragonfly")]
    public void Mach_RandomScan_ReadsAndFaultsEveryPageAlone(string vm)
    {
        const int pages = 200;
        using var m = new LabMount(vm);
        var native = Native(m.Dir, pages, "random");
        var (_, nop) = Run(m, pages, [], "nop");
        var (r, c) = Run(m, pages, [], "random");
        Assert.Equal(native.Stdout, r.Stdout);
        Assert.Equal(pages, D(c, nop, "v_vm_faults"));
        Assert.Equal(pages, D(c, nop, "v_io_faults"));
        Assert.Equal(pages, D(c, nop, "pager_pages"));
        Assert.Equal(0, D(c, nop, "read_ahead_pages") + D(c, nop, "read_behind_pages"));
        Assert.Equal(0, D(c, nop, "pages_prefaulted"));
    }

    /// <summary>
    /// MADV_DONTNEED keeps Linux's bytes under every design: a private anonymous page reads zero
    /// again, a private file page the file again, the pages not advised keep what was written.
    /// MADV_FREE on lab memory drops the pages at once (the kernel raised the same REMOVE event;
    /// a page it kept lazily would be one the model forgot), so the dropped half refaults:
    /// 64 zero-fill faults for the fill and 32 for the reread, each a fault of its own as fresh
    /// anonymous memory has no neighbour to map (000: 940–981, no prefault after a zero fill;
    /// 001: 779–870, no anons in the window). On a private file mapping MADV_FREE is EINVAL,
    /// as Linux answers for a file mapping (the kernel sees lab files as anonymous memory).
    /// </summary>
    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void DontneedAndFree_LinuxBytes_FreeDropsAtOnce(string vm)
    {
        const int pages = 64;
        using var m = new LabMount(vm);
        var native = Native(m.Dir, pages, "dontneed", "free");
        Assert.Contains("dontneed anon-zero 1 file-again 1 kept 1\n", native.Stdout);
        var (r, _) = Run(m, pages, [], "dontneed", "free");
        Assert.Equal(native.Stdout, r.Stdout);
        var (_, nop) = Run(m, pages, [], "nop");
        var (_, free) = Run(m, pages, [], "free");
        Assert.Equal(96, D(free, nop, "v_vm_faults"));
        Assert.Equal(96, D(free, nop, "pages_installed"));
    }

    /// <summary>
    /// MAP_POPULATE and mlockall(MCL_FUTURE) keep anonymous memory lab memory: every page of the
    /// 64 is faulted in through the design at mmap time (a zero fill each, no neighbours: 000:
    /// 940–981; a wiring fault maps none either, 002: 364–369, 001: 663–667), and the program's
    /// own writes then take no fault. Before, such mappings were plain program memory (0 faults).
    /// </summary>
    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void PopulateAndFutureLock_FaultEveryPageThroughTheDesign(string vm)
    {
        const int pages = 64;
        using var m = new LabMount(vm);
        var native = Native(m.Dir, pages, "populate", "future");
        var (_, nop) = Run(m, pages, [], "nop");
        var (pr, pop) = Run(m, pages, [], "populate");
        Assert.Contains(native.Stdout.Split('\n')[0], pr.Stdout);
        Assert.Equal(64, D(pop, nop, "v_vm_faults"));
        Assert.Equal(64, D(pop, nop, "pages_installed"));
        Assert.Equal(0, D(pop, nop, "pages_prefaulted"));
        var (fr, fut) = Run(m, pages, [], "future");
        Assert.Contains(native.Stdout.Split('\n')[1], fr.Stdout);
        Assert.Equal(64, D(fut, nop, "v_vm_faults"));
        Assert.Equal(64, D(fut, nop, "pages_installed"));
    }

    /// <summary>
    /// MAP_LOCKED on 16 MiB under an 8 MiB resident limit: the mapping is lab memory, wired, so
    /// the pageout never takes it while it is locked (the limit below the wired set is reported
    /// once), and all its pages are still resident a second later (mincore); after munlock the
    /// pageout takes its pages again and the reread brings them back.
    /// </summary>
    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void MapLocked_WiredUnderLimit_PagedAgainAfterMunlock(string vm)
    {
        const int pages = 4096;
        using var m = new LabMount(vm);
        var native = Native(m.Dir, pages, "locked");
        var (r, c) = Run(m, pages, ["--resident-limit", "8M"], new Dictionary<string, string> { ["ADVCHECK_WAIT_PAGEOUT"] = "1" }, "locked");
        Assert.Equal(native.Stdout, r.Stdout);   // "locked all resident 1": a second under the limit took none
        Assert.Contains("locked all resident 1\n", r.Stdout);
        Assert.InRange(LabMount.Get(c, "resident_wired_max_pages"), pages, pages + 16);
        Assert.Equal(1, LabMount.Get(c, "resident_limit_below_wired"));
        Assert.InRange(LabMount.Get(c, "pages_installed"), pages, int.MaxValue);
        Assert.True(LabMount.Get(c, "pageouts") > 0, "no pageout after munlock");
        Assert.True(LabMount.Get(c, "pageins") > 0, "the reread after munlock brought nothing back");
    }

    /// <summary>`lab run --stats mlockcheck 1 mmap WORDS...`: 256 pages of one fresh anonymous mapping.</summary>
    (RunResult R, Dictionary<string, long> C) Mlock(LabMount m, params string[] words)
    {
        var r = Sh.Run(Repo.Lab, new[] { "run", "--mount", m.Mount, "--stats", "--", Repo.Prog("mlockcheck"), "1", "mmap" }.Concat(words),
            timeoutMs: 60_000);
        output.WriteLine(string.Join(' ', words) + ": " + r);
        Assert.True(r.ExitCode == 0, r.ToString() + m.DaemonLog);
        var c = LabMount.ParseCounters(r.Stderr);
        Assert.Equal(0, LabMount.Get(c, "sigbus") + LabMount.Get(c, "internal_errors") + LabMount.Get(c, "lookup_miss"));
        return (r, c);
    }

    /// <summary>
    /// mlock is the design's wiring, each page counted once. The daemon wires the 256 pages
    /// before the real call, every page a wiring fault (vm_map_wire's per-page vm_fault
    /// with VM_FAULT_WIRE; 002: 1096–1103; 001: 1842–1843), so the kernel's own populate finds
    /// them present and faults none through the uffd:
    /// - untouched memory: the wiring faults replace the program's write faults one for one
    ///   (the same zero fills, no neighbours: 000: 959–963, 001: 598–602), so nothing changes
    ///   in v_vm_faults, pages_installed or ru_minflt; under UVM the amap is made by the wiring
    ///   caller for the whole range (uvm_map_pageable, 001: 1817–1821), where the program's
    ///   first fault copies a 16-page chunk of the 256-page entry (it is UVM_AMAP_LARGE) and
    ///   the fault past it the 240 pages left (uvmfault_amapcopy): 2 fltamcopy fewer;
    /// - memory written before the mlock: the seeds still fault every page of the range (each
    ///   counted: 000: 299 and 1006; 002: 221 and 394; 001: 589), the lab resolving each as a
    ///   write-protect fault on the present page: 256 more faults, 256 ru_minflt, nothing
    ///   installed. (Before, the kernel's populate found the pages present and the design
    ///   counted nothing.)
    /// </summary>
    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void Mlock_WiresAsTheDesign_EachPageCountedOnce(string vm)
    {
        const int pages = 256;
        bool uvm = vm.StartsWith("uvm", StringComparison.Ordinal);
        var native = Sh.Run(Repo.Prog("mlockcheck"), ["1", "mmap"]);
        Assert.True(native.ExitCode == 0, native.ToString());
        using var m = new LabMount(vm);
        var (_, plain) = Mlock(m, "nolock");
        var (r, locked) = Mlock(m);
        Assert.Equal(native.Stdout, r.Stdout);
        foreach (var n in new[] { "v_vm_faults", "pages_installed", "ru_minflt", "ru_majflt", "pages_prefaulted" })
            Assert.True(D(locked, plain, n) == 0, $"{n}: {D(locked, plain, n)}");
        Assert.Equal(uvm ? -2 : 0, D(locked, plain, "fltamcopy"));
        if (uvm) Assert.Equal(0, D(locked, plain, "faults"));
        else Assert.Equal(0, D(locked, plain, "v_zfod"));

        var (_, touched) = Mlock(m, "pretouch", "nolock");
        var (tr, touchedLocked) = Mlock(m, "pretouch");
        Assert.Equal(native.Stdout, tr.Stdout);
        Assert.Equal(pages, D(touchedLocked, touched, "v_vm_faults"));
        Assert.Equal(pages, D(touchedLocked, touched, "ru_minflt"));
        Assert.Equal(pages, D(touchedLocked, touched, "wp_resolved"));
        Assert.Equal(uvm ? pages : 0, D(touchedLocked, touched, "faults"));
        Assert.Equal(0, D(touchedLocked, touched, "pages_installed"));
        Assert.Equal(0, D(touchedLocked, touched, "ru_majflt"));
    }

    /// <summary>
    /// MADV_WILLNEED on a private mapping of a warm 200-page file (its pages resident after the
    /// "warm" scan). No seed has WILLNEED (tests/Vm.Tests/WillNeedTests gives the evidence); the
    /// Mach designs follow their kernels' vm_map_madvise, which maps the resident pages of the
    /// entry's object read-only (FreeBSD vm_map_pmap_enter; DragonFly pmap_object_init_pt, a
    /// vnode object here): all 200 are mapped and the scan takes no fault at all. UVM maps
    /// nothing (NetBSD 1.5 leaves WILLNEED unimplemented; 2019's read-ahead reads nothing more
    /// of a warm file), so the scan is exactly the NORMAL scan.
    /// </summary>
    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void WillNeed_WarmFile_MachMapsEveryPage_UvmNothing(string vm)
    {
        const int pages = 200;
        bool mach = !vm.StartsWith("uvm", StringComparison.Ordinal);
        using var m = new LabMount(vm);
        var native = Native(m.Dir, pages, "warm", "willneed");
        var (_, warm) = Run(m, pages, [], "warm");
        var (_, normal) = Run(m, pages, [], "warm", "normal");
        var (r, c) = Run(m, pages, [], "warm", "willneed");
        Assert.Contains(native.Stdout.Split('\n').First(l => l.StartsWith("willneed ")), r.Stdout);
        if (mach)
        {
            Assert.Equal(0, D(c, warm, "v_vm_faults"));
            Assert.Equal(pages, D(c, warm, "willneed_mapped"));
            Assert.Equal(pages, D(c, warm, "pages_installed"));
            Assert.Equal(0, D(c, warm, "pager_pages"));   // nothing read: the pages were resident
        }
        else
        {
            Assert.Equal(0, LabMount.Get(c, "willneed_mapped"));
            foreach (var n in new[] { "v_vm_faults", "faults", "pages_installed", "fltnomap", "fltget" })
                Assert.True(D(c, normal, n) == 0, $"{n}: {D(c, normal, n)}");
        }
    }
}
