using FsCheck.Fluent;
using Lab.Vm;
using Xunit;
using Xunit.Abstractions;

namespace Lab.Props;

/// <summary>
/// The properties are only as good as their workloads: these facts make sure the generated
/// workloads really reach the interesting paths (copy-on-write, pager I/O, prefault,
/// SIGBUS, SIGSEGV, fork, remap), so a property cannot pass by testing nothing.
/// </summary>
public sealed class Vacuity(ITestOutputHelper output)
{
    [Theory, MemberData(nameof(Properties.Designs), MemberType = typeof(Properties))]
    public void GeneratedWorkloads_ReachEveryPath(string design)
    {
        // A fixed seed: the thresholds below are about the generator, not luck.
        var sample = WorkloadGen.Workload(Properties.General).Sample(300, new FsCheck.Rnd(20251121UL, 0x9E3779B97F4A7C15UL), 50);
        var total = new VmCounters();
        int ops = 0, forks = 0, skipped = 0, wires = 0, evictions = 0, roundTrips = 0;
        var outcomes = new Dictionary<(bool, Outcome), int>();
        foreach (var w in sample)
        {
            var r = Runner.Run(w, design, Checks.None);
            r.Totals.AddTo(total);
            ops += w.Ops.Length;
            forks += r.Forks;
            skipped += r.Skipped;
            wires += r.Wires;
            evictions += r.Evictions;
            roundTrips += r.SwapRoundTrips;
            foreach (var a in r.Accesses) outcomes[(a.Write, a.Outcome)] = outcomes.GetValueOrDefault((a.Write, a.Outcome)) + 1;
        }
        var c = total.Snapshot().ToDictionary(kv => kv.Key, kv => kv.Value);
        output.WriteLine($"{design}: {sample.Length} workloads, {ops} ops, {forks} forks, {wires} mlocks, {evictions} evictions, {roundTrips} swap round trips, {skipped} skipped");
        foreach (var (k, v) in outcomes.OrderBy(kv => kv.Key)) output.WriteLine($"  {(k.Item1 ? "write" : "read")} {k.Item2}: {v}");
        foreach (var (k, v) in c) if (v != 0) output.WriteLine($"  {k} = {v}");
        int Out(bool write, Outcome o) => outcomes.GetValueOrDefault((write, o));
        Assert.True(Out(false, Outcome.Ok) > ops / 10, "reads that succeed");
        Assert.True(Out(true, Outcome.Ok) > ops / 16, "writes that succeed");
        Assert.True(Out(false, Outcome.SigSegv) + Out(true, Outcome.SigSegv) > 0, "SIGSEGV");
        Assert.True(Out(false, Outcome.SigBus) + Out(true, Outcome.SigBus) > 0, "SIGBUS");
        Assert.True(forks > sample.Length, "forks");
        Assert.True(wires > sample.Length / 10, "successful mlocks");
        Assert.True(skipped < ops / 10, "ops skipped as invalid");
        Assert.True(evictions > sample.Length / 5, "evictions that dropped a page");
        Assert.True(roundTrips > sample.Length / 20, "swap round trips");
        Assert.True(c.GetValueOrDefault("pageouts") > 0 && c.GetValueOrDefault("pageins") > 0 && c.GetValueOrDefault("evict_clean") > 0, "pageouts, pageins, clean evictions");
        foreach (var name in new[] { "v_vm_faults", "pages_prefaulted", "eof_faults", "pager_errors" })
            if (c.ContainsKey(name)) Assert.True(c[name] > 0, name);
        // Copy-on-write and zero fill under either lineage's names.
        Assert.True(c.GetValueOrDefault("v_cow_faults") + c.GetValueOrDefault("flt_acow") + c.GetValueOrDefault("flt_prcopy") > 0, "copy-on-write");
        Assert.True(c.GetValueOrDefault("v_zfod") + c.GetValueOrDefault("flt_przero") > 0, "zero fill");
    }

    /// <summary>The injected pager latency really changes maps while faults wait for I/O.</summary>
    [Theory, MemberData(nameof(Properties.Designs), MemberType = typeof(Properties))]
    public void PagerLatency_ChangesMapsDuringIo(string design)
    {
        var sample = WorkloadGen.Workload(Properties.General).Sample(100, new FsCheck.Rnd(20251121UL, 0x9E3779B97F4A7C15UL), 50);
        int n = 0;
        foreach (var w in sample) n += Runner.Run(w, design, Checks.None, interfere: true).Interferences;
        output.WriteLine($"{design}: {n} map changes during pager I/O in {sample.Length} workloads");
        Assert.True(n > sample.Length / 4, "map changes during pager I/O");
    }

    /// <summary>The §4.12/20/21/23/25 properties check something: injections, known clean and dirty evictions, slot-policy writes, probes after MADV_DONTNEED.</summary>
    [Theory, MemberData(nameof(Properties.Designs), MemberType = typeof(Properties))]
    public void NewProperties_AreNotVacuous(string design)
    {
        var rnd = new FsCheck.Rnd(20251121UL, 0x9E3779B97F4A7C15UL);
        int inj = 0, clean = 0, dirty = 0, policy = 0, probes = 0, maxFaults = 0;
        foreach (var w in WorkloadGen.Workload(Properties.General).Sample(100, rnd, 50))
        {
            var r = Runner.Run(w, design, Checks.Liveness, injectFailures: true);
            inj += r.Injections;
            maxFaults = Math.Max(maxFaults, r.MaxFaultsPerAccess);
        }
        foreach (var w in WorkloadGen.Workload(Properties.Swapping with { NoSwapPercent = 0 }).Sample(100, rnd, 50))
        {
            var r = Runner.Run(w, design, Checks.DirtyClean | Checks.SlotPolicy);
            clean += r.CleanEvictions;
            dirty += r.DirtyEvictions;
            policy += r.SlotPolicyChecks;
        }
        foreach (var w in WorkloadGen.Workload(Properties.General with { Weights = new(Properties.General.Weights) { [OpKind.DontNeed] = 10 } }).Sample(100, rnd, 50))
            probes += Runner.Run(w, design, Checks.RemoveSemantics).RemoveProbes;
        output.WriteLine($"{design}: {inj} injected install failures, most faults for one access {maxFaults}, {clean} clean and {dirty} dirty evictions checked, " +
                         $"{policy} slot-policy checks, {probes} reads right after MADV_DONTNEED");
        Assert.True(inj > 50, "injected install failures");
        Assert.True(maxFaults == Runner.FaultBound, "some access needs the full fault bound (the bound is tight)");
        Assert.True(clean > 20 && dirty > 20, "clean and dirty evictions checked");
        Assert.True(policy > 5, "first writes after a page-out (slot policy)");
        Assert.True(probes > 50, "reads right after MADV_DONTNEED");
    }
}
