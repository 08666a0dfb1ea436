namespace Lab.Tests;

/// <summary>
/// `lab run --heap lab` (the default): every malloc block of the program is lab anonymous memory, so
/// its heap is served, counted and paged like its other memory; `--heap glibc` keeps glibc's
/// allocator, whose small blocks live on the brk heap outside the lab.
/// </summary>
public sealed class HeapTests
{
    const int Blocks = 1600;                     // 1,600 x 64 KiB = 100 MiB of heap
    const long HeapPages = Blocks * 65536L / 4096;

    // Python keeps 64 KiB bytearrays in malloc blocks (over pymalloc's 512-byte limit).
    const string Script = """
        import sys
        n = int(sys.argv[1])
        x = [bytearray(65536) for i in range(n)]
        for i, b in enumerate(x):
            b[0] = i & 255; b[-1] = (i * 7) & 255; b[32768] = (i * 13) & 255
        print(n, sum(b[0] + b[-1] + b[32768] for b in x), sum(map(len, x)))
        """;

    static string Native(string script) =>
        Sh.Run(Repo.Python, new[] { "-c", script, Blocks.ToString() }).Stdout;

    [KernelTheory]
    [MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void PythonHeap_IsLabMemory_PagedUnderALimit(string vm)
    {
        using var m = new LabMount(vm);
        var expected = Native(Script);
        Assert.StartsWith($"{Blocks} ", expected);
        var r = Sh.Lab("run", "--mount", m.Mount, "--resident-limit", "16M", "--stats", "--", Repo.Python, "-c", Script, Blocks.ToString());
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal(expected, r.Stdout);
        var c = LabMount.ParseCounters(r.Stderr);
        // 100 MiB of heap under a 16 MiB limit: most of it must have gone out and come back.
        Assert.True(LabMount.Get(c, "pageouts") >= HeapPages / 2, r.Stderr);
        Assert.True(LabMount.Get(c, "pageins") >= 1000, r.Stderr);
        Assert.True(LabMount.Get(c, "pages_installed") >= HeapPages * 9 / 10, r.Stderr);
        long served = LabMount.Get(c, "fault_count"), kernel = LabMount.Get(c, "kernel_faults");
        Assert.True(served * 10 >= kernel * 9, $"coverage under 90%: {served} of {kernel}\n{r.Stderr}");
    }

    [KernelFact]
    public void GlibcHeap_LeavesSmallBlocksOutside()
    {
        using var m = new LabMount();
        var r = Sh.Lab("run", "--mount", m.Mount, "--heap", "glibc", "--stats", "--", Repo.Python, "-c", Script, Blocks.ToString());
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal(Native(Script), r.Stdout);
        var c = LabMount.ParseCounters(r.Stderr);
        // 64 KiB blocks sit on glibc's brk heap: next to none of the heap's pages are lab faults.
        Assert.True(LabMount.Get(c, "fault_count") < HeapPages / 10, r.Stderr);
        Assert.True(LabMount.Get(c, "kernel_faults") > HeapPages, r.Stderr);
    }

    [KernelFact]
    public void SmallMallocBlocks_OfACProgram_AreLabFaults()
    {
        // awk keeps each of 200,000 array entries (a 63-byte key and its value) in small malloc
        // blocks: about 6,000 heap pages, all on glibc's brk heap under --heap glibc.
        using var m = new LabMount();
        var lines = Enumerable.Range(0, 200_000).Select(i => ((i * 7919L) % 200_000).ToString("D63"));
        File.WriteAllText(m.B("in.txt"), string.Join('\n', lines) + "\n");
        string[] awk = ["/usr/bin/awk", "{a[$0]=NR} END{print length(a)}", m.M("in.txt")];
        var lab = Sh.Lab(["run", "--mount", m.Mount, "--stats", "--", .. awk]);
        var glibc = Sh.Lab(["run", "--mount", m.Mount, "--heap", "glibc", "--stats", "--", .. awk]);
        Assert.True(lab.ExitCode == 0 && lab.Stdout == "200000\n", lab.ToString());
        Assert.True(glibc.ExitCode == 0 && glibc.Stdout == "200000\n", glibc.ToString());
        long labFaults = LabMount.Get(LabMount.ParseCounters(lab.Stderr), "fault_count");
        long glibcFaults = LabMount.Get(LabMount.ParseCounters(glibc.Stderr), "fault_count");
        Assert.True(glibcFaults < 500, glibc.Stderr);
        Assert.True(labFaults >= 5000, lab.Stderr);
        Assert.True(labFaults * 10 >= LabMount.Get(LabMount.ParseCounters(lab.Stderr), "kernel_faults") * 8, lab.Stderr);
    }

    [KernelFact]
    public void MissingAllocator_IsOneClearLine()
    {
        using var m = new LabMount();
        var r = Sh.Run(Repo.Lab, new[] { "run", "--mount", m.Mount, "--", "/bin/true" },
            new Dictionary<string, string> { ["LAB_ALLOCATOR"] = "/nonexistent/libjemalloc.so.2" });
        Assert.NotEqual(0, r.ExitCode);
        Assert.Equal("lab: LAB_ALLOCATOR: /nonexistent/libjemalloc.so.2: no such file", r.Stderr.Trim());
    }
}

/// <summary>A program that grows its own data segment (brk/sbrk) gets lab memory.</summary>
public sealed class BrkTests
{
    [KernelTheory]
    [MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void SbrkGrownPages_AreLabFaults_AndReadZeroAfterTheBreakDrops(string vm)
    {
        const int Pages = 2048;
        var native = Sh.Run(Repo.Prog("brkcheck"), new[] { Pages.ToString() });
        Assert.Equal($"ok {Pages}\n", native.Stdout);
        using var m = new LabMount(vm);
        var (r, c) = m.RunCounted(Repo.Prog("brkcheck"), Pages.ToString());
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal(native.Stdout, r.Stdout);
        // Each page is written once (a zero fill), the upper half once more after the break rose
        // again: at least 1.5 x PAGES lab faults, and every one the kernel saw in the segment.
        Assert.True(LabMount.Get(c, "fault_count") >= Pages * 3 / 2, r.Stderr);
        Assert.True(LabMount.Get(c, "lab_faults_outside") < Pages / 4, r.Stderr);
    }
}
