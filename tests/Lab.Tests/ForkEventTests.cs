namespace Lab.Tests;

/// <summary>
/// Forks, wipe-on-fork and mremap moves under `lab run` (forkcheck, tests/progs): a fault must
/// never be resolved against a map that has not yet applied the event or request that made its
/// range, and a fork child's map must be the one the kernel gave it.
/// </summary>
public sealed class ForkEventTests(ITestOutputHelper output)
{
    (RunResult R, Dictionary<string, long> C) Run(LabMount m, params string[] args)
    {
        var (r, c) = m.RunCounted(new[] { Repo.Prog("forkcheck") }.Concat(args).ToArray());
        output.WriteLine(r.ToString());
        output.WriteLine(string.Join("\n", c.Select(kv => $"{kv.Key} {kv.Value}")));
        if (r.ExitCode != 0) output.WriteLine("--- daemon\n" + m.DaemonLog);
        return (r, c);
    }

    /// <summary>forkcheck's malloc or fixed mode: n children a round, every one ends well.</summary>
    Dictionary<string, long> RunChildren(LabMount m, string mode, int n, int rounds)
    {
        var (r, c) = Run(m, mode, $"{n}", $"{rounds}");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal($"{mode} children={n * rounds} killed=0 bad=0\n", r.Stdout);
        return c;
    }

    static void AssertClean(Dictionary<string, long> c, long processes)
    {
        Assert.Equal(0, LabMount.Get(c, "lookup_miss"));
        Assert.Equal(0, LabMount.Get(c, "internal_errors"));
        Assert.Equal(0, LabMount.Get(c, "model_resyncs"));
        Assert.Equal(processes, LabMount.Get(c, "processes"));
    }

    // Children that say hello in any order must each get their own uffd: handed out in event
    // order, a child took its sibling's, registered its malloc in the sibling's mm, and the
    // sibling's first touch of its own malloc found no range (SIGBUS).
    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void EightChildrenForkedAtOnceEachMallocAndTouchAMegabyte(string vm)
    {
        using var m = new LabMount(vm);
        const int n = 8, rounds = 12;
        var c = RunChildren(m, "malloc", n, rounds);
        AssertClean(c, 1 + n * rounds);
    }

    // The same mix-up without a crash: a child mapping at an address only it uses registered it
    // on a sibling's uffd, the kernel refused, and the memory silently stayed outside the lab.
    // Every child's 16 pages must be zero-filled by the lab, in its own space.
    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void EveryForkedChildGetsItsOwnUffd(string vm)
    {
        using var m = new LabMount(vm);
        const int n = 8, rounds = 5;
        var c = RunChildren(m, "fixed", n, rounds);
        Assert.Equal(n * rounds * 16, LabMount.Get(c, vm.StartsWith("uvm") ? "flt_przero" : "v_zfod"));
        AssertClean(c, 1 + n * rounds);
    }

    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void ThreeChildrenWriteOneFileThroughPwriteAndASharedMapping(string vm)
    {
        using var m = new LabMount(vm);
        const int rounds = 10;
        var (r, c) = Run(m, "pwrite", m.M("f"), $"{rounds}");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal($"pwrite children={3 * rounds} killed=0 bad=0\n", r.Stdout);
        // The last round's bytes, as every process wrote them, in the backing file.
        var want = new byte[4 * 64 * 4096];
        for (int k = 0; k < 3; k++)
            for (int i = 0; i < 64 * 4096; i++)
                want[k * 64 * 4096 + i] = (byte)(i < 32 * 4096 ? 'A' + k : 'a' + k);
        Assert.Equal(want, File.ReadAllBytes(m.B("f")));
        AssertClean(c, 1 + 3 * rounds);
    }

    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void ForkedChildrenGrowMoveAndShrinkWithMremap(string vm)
    {
        using var m = new LabMount(vm);
        const int rounds = 10;   // 6 failed 9 runs in 10 on the old code
        var (r, c) = Run(m, "mremap", $"{rounds}");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal($"mremap children={4 * rounds} killed=0 bad=0\n", r.Stdout);
        AssertClean(c, 1 + 4 * rounds);
    }

    // MADV_WIPEONFORK (BSD: VM_INHERIT_ZERO): the child's range is new zero-fill memory, its
    // own child's too; the parent keeps its bytes, and MADV_KEEPONFORK undoes the advice.
    // MADV_DONTFORK (VM_INHERIT_NONE): the child's map (the lab's model too) has no such range.
    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void WipeOnForkGivesTheChildZeroFillMemory(string vm)
    {
        using var m = new LabMount(vm);
        const int rounds = 5;
        var (r, c) = Run(m, "wipeonfork", $"{rounds}", m.Mount);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal($"wipeonfork children={rounds} killed=0 bad=0\n", r.Stdout);
        AssertClean(c, 1 + 2 * rounds);
        // Zero fills per round: the parent's first writes (16 + 32 + 32 pages) and its read of the
        // 16 pages it never wrote; the child's 32 wiped pages; the grandchild's 32 again.
        Assert.Equal(rounds * (80 + 16 + 32 + 32), LabMount.Get(c, vm.StartsWith("uvm") ? "flt_przero" : "v_zfod"));
    }

    // mremap(MREMAP_DONTUNMAP): the pages move; the old range stays mapped, empty, and takes writes.
    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void MremapDontUnmapLeavesTheOldRangeMappedAndEmpty(string vm)
    {
        using var m = new LabMount(vm);
        const int rounds = 20;
        var (r, c) = Run(m, "dontunmap", $"{rounds}");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal($"dontunmap rounds={rounds} bad=0\n", r.Stdout);
        AssertClean(c, 1);
    }
}
