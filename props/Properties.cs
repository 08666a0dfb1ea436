using FsCheck;
using FsCheck.Fluent;
using Lab.Vm;
using Xunit;

namespace Lab.Props;

/// <summary>
/// The invariants of shared/notes/SEEDS.md §4, each a property over generated workloads,
/// checked for every design in <see cref="Resolvers.Names"/>. Every property also checks
/// every access against the oracle and every pmap call (installs only in the faulting
/// space, inside its mappings, within their protection, never past EOF).
/// A failure prints the design, the shrunk (minimal) operation list, FsCheck's replay seed
/// and the execution of the shrunk workload. Replay one with LAB_PROPS_REPLAY="seed,gamma".
/// </summary>
public sealed class Properties
{
    public static TheoryData<string> Designs()
    {
        var d = new TheoryData<string>();
        foreach (var n in Resolvers.Names) d.Add(n);
        return d;
    }

    // ---- workload profiles ----

    static Dictionary<OpKind, int> Mix(params (OpKind, int)[] w) => w.ToDictionary(x => x.Item1, x => x.Item2);

    /// <summary>Everything at once.</summary>
    internal static readonly Profile General = new("general")
    {
        Weights = Mix((OpKind.MmapAnon, 5), (OpKind.MmapFile, 6), (OpKind.Read, 30), (OpKind.Write, 25),
            (OpKind.Fork, 5), (OpKind.Exit, 2), (OpKind.Munmap, 2), (OpKind.DontNeed, 3), (OpKind.Mprotect, 3),
            (OpKind.Mremap, 2), (OpKind.Grow, 2), (OpKind.Msync, 2), (OpKind.Advise, 2),
            (OpKind.Wire, 1), (OpKind.Unwire, 1), (OpKind.Evict, 3)),
    };

    static readonly Profile SingleProcess = General with
    {
        MaxProcs = 1, SharedPercent = 0,
        Weights = Mix((OpKind.MmapAnon, 5), (OpKind.MmapFile, 5), (OpKind.Read, 30), (OpKind.Write, 30),
            (OpKind.Munmap, 2), (OpKind.DontNeed, 3), (OpKind.Mprotect, 3), (OpKind.Mremap, 3), (OpKind.Grow, 2), (OpKind.Evict, 3)),
    };

    static readonly Profile PrivateForks = General with
    {
        SharedPercent = 0,
        Weights = Mix((OpKind.MmapAnon, 5), (OpKind.MmapFile, 5), (OpKind.Read, 30), (OpKind.Write, 30),
            (OpKind.Fork, 8), (OpKind.Exit, 3), (OpKind.DontNeed, 3), (OpKind.Mprotect, 2), (OpKind.Mremap, 2),
            (OpKind.Munmap, 1), (OpKind.Evict, 3)),
    };

    static readonly Profile DeepForks = General with
    {
        SharedPercent = 0, ErrorPercent = 0,
        Weights = Mix((OpKind.MmapAnon, 3), (OpKind.MmapFile, 3), (OpKind.Read, 30), (OpKind.Write, 30),
            (OpKind.Fork, 15), (OpKind.Exit, 6), (OpKind.DontNeed, 3), (OpKind.Mremap, 1), (OpKind.Evict, 3)),
    };

    static readonly Profile SharedHeavy = General with
    {
        SharedPercent = 80,
        Weights = Mix((OpKind.MmapAnon, 2), (OpKind.MmapFile, 8), (OpKind.Read, 30), (OpKind.Write, 30),
            (OpKind.Fork, 6), (OpKind.Exit, 2), (OpKind.Msync, 6), (OpKind.Munmap, 2), (OpKind.DontNeed, 3),
            (OpKind.Mprotect, 3), (OpKind.Mremap, 2), (OpKind.Grow, 1), (OpKind.Evict, 3)),
    };

    static readonly Profile PrivateFiles = General with
    {
        SharedPercent = 25,
        Weights = Mix((OpKind.MmapFile, 10), (OpKind.MmapAnon, 1), (OpKind.Read, 20), (OpKind.Write, 35),
            (OpKind.Fork, 5), (OpKind.Exit, 2), (OpKind.DontNeed, 3), (OpKind.Msync, 3), (OpKind.Mprotect, 3),
            (OpKind.Mremap, 2), (OpKind.Grow, 2), (OpKind.Advise, 2), (OpKind.Evict, 3)),
    };

    static readonly Profile AnonHeavy = General with
    {
        Weights = Mix((OpKind.MmapAnon, 10), (OpKind.MmapFile, 1), (OpKind.Read, 30), (OpKind.Write, 20),
            (OpKind.Fork, 5), (OpKind.Exit, 2), (OpKind.DontNeed, 4), (OpKind.Munmap, 2), (OpKind.Mremap, 2),
            (OpKind.Grow, 3), (OpKind.Evict, 3)),
    };

    static readonly Profile Errors = General with
    {
        ErrorPercent = 100, SharedPercent = 40,
        Weights = Mix((OpKind.MmapFile, 10), (OpKind.MmapAnon, 2), (OpKind.Read, 30), (OpKind.Write, 20),
            (OpKind.Fork, 4), (OpKind.Exit, 2), (OpKind.DontNeed, 3), (OpKind.Mremap, 2), (OpKind.Munmap, 2), (OpKind.Advise, 2), (OpKind.Evict, 3)),
    };

    static readonly Profile PastEof = General with
    {
        PartialPercent = 100, ErrorPercent = 0, MaxFilePages = 6,
        Weights = Mix((OpKind.MmapFile, 10), (OpKind.Read, 30), (OpKind.Write, 25), (OpKind.Fork, 3),
            (OpKind.Grow, 6), (OpKind.Mremap, 2), (OpKind.DontNeed, 3), (OpKind.Msync, 2), (OpKind.Munmap, 1),
            (OpKind.Advise, 2), (OpKind.Evict, 3)),
    };

    static readonly Profile Protections = General with
    {
        Prots = [Prot.Read | Prot.Write, Prot.Read, Prot.Read, Prot.None],
        Weights = Mix((OpKind.MmapAnon, 5), (OpKind.MmapFile, 6), (OpKind.Read, 25), (OpKind.Write, 30),
            (OpKind.Mprotect, 12), (OpKind.Fork, 4), (OpKind.Exit, 1), (OpKind.DontNeed, 2), (OpKind.Mremap, 2),
            (OpKind.Grow, 1), (OpKind.Evict, 3)),
    };

    // ---- the properties ----

    /// <summary>§4.1: after a write, the process reads it back (single process; remap, dontneed, mprotect in between).</summary>
    [Theory, MemberData(nameof(Designs))]
    public void ReadYourWrites(string design) =>
        Check(design, nameof(ReadYourWrites), SingleProcess, w => Runner.Run(w, design, Checks.Counters, maxProcs: 1));

    /// <summary>§4.2: private memory after fork: a write on one side is never seen on the other.</summary>
    [Theory, MemberData(nameof(Designs))]
    public void ForkIsolation(string design) =>
        Check(design, nameof(ForkIsolation), PrivateForks, Checks.NoWritableSharing);

    /// <summary>§4.3: MAP_SHARED pages are the file's: every mapper sees a write at once; msync puts it in the file.</summary>
    [Theory, MemberData(nameof(Designs))]
    public void SharedCoherence(string design) =>
        Check(design, nameof(SharedCoherence), SharedHeavy, Checks.Cache | Checks.Msync);

    /// <summary>§4.4: private writes never reach the page cache or the backing file.</summary>
    [Theory, MemberData(nameof(Designs))]
    public void PrivateNeverWritesThrough(string design) =>
        Check(design, nameof(PrivateNeverWritesThrough), PrivateFiles, Checks.Cache | Checks.Msync);

    /// <summary>§4.5: a never-touched anonymous page reads zero, and its first fault counts exactly one zero fill.</summary>
    [Theory, MemberData(nameof(Designs))]
    public void ZeroFill(string design) =>
        Check(design, nameof(ZeroFill), AnonHeavy, Checks.ZeroFill);

    /// <summary>§4.7/4.8: deep fork trees with exits in the middle: what every address reads follows the chain rule, the chains stay consistent.</summary>
    [Theory, MemberData(nameof(Designs))]
    public void ChainLookupAndCollapseTransparency(string design) =>
        Check(design, nameof(ChainLookupAndCollapseTransparency), DeepForks, Checks.Structure | Checks.NoWritableSharing);

    /// <summary>§4.9: a page installed writable is owned by that space alone; nothing writable in a read-only mapping.</summary>
    [Theory, MemberData(nameof(Designs))]
    public void NoWritableSharing(string design) =>
        Check(design, nameof(NoWritableSharing), General, Checks.NoWritableSharing);

    /// <summary>§4.10: reference and shadow counts match the maps; after every process exits, nothing is alive.</summary>
    [Theory, MemberData(nameof(Designs))]
    public void ReferenceCountsReturnToBaseline(string design) =>
        Check(design, nameof(ReferenceCountsReturnToBaseline), General, Checks.Structure);

    /// <summary>§4.14: an injected pager error gives SIGBUS on exactly that file page, never silent bytes, nothing else fails.</summary>
    [Theory, MemberData(nameof(Designs))]
    public void ErrorContainment(string design) =>
        Check(design, nameof(ErrorContainment), Errors, Checks.Counters | Checks.Cache);

    /// <summary>§4.15: access at or past EOF is SIGBUS; the tail of the last partial page reads zero.</summary>
    [Theory, MemberData(nameof(Designs))]
    public void Eof(string design) =>
        Check(design, nameof(Eof), PastEof, Checks.Counters | Checks.Cache);

    /// <summary>
    /// §4.16: read-ahead, read-behind and prefault change no byte read: the same workload on a cold
    /// page cache, on a warm one (no clustering at all), and under the reference design gives the
    /// same signals and the same bytes wherever Linux specifies them.
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void ClusteringNeverChangesContent(string design) =>
        Check(design, nameof(ClusteringNeverChangesContent), General with
        {
            Weights = new(General.Weights) { [OpKind.Advise] = 6 },
        }, w =>
        {
            var cold = Runner.Run(w, design, Checks.None);
            var warm = Runner.Run(WithAdvice(w, Advice.Normal), design, Checks.None, warmCache: true);
            Same(cold, warm, "cold page cache, advice as generated", "warm page cache, no advice");
            var seq = Runner.Run(WithAdvice(w, Advice.Sequential), design, Checks.None);
            Same(cold, seq, "advice as generated", "all advice SEQUENTIAL");
            string reference = Resolvers.Names[0];
            if (reference != design)
                Same(cold, Runner.Run(WithAdvice(w, Advice.Random), reference, Checks.None), design, $"{reference}, all advice RANDOM");
        });

    static bool Prefaultish(EvictResult r) => r is EvictResult.Clean or EvictResult.Evicted or EvictResult.NotResident;

    static Workload WithAdvice(Workload w, Advice a) =>
        w.With(ops: [.. w.Ops.Select(o => o.Kind == OpKind.Advise ? o with { Advice = a } : o)]);

    /// <summary>§4.17: every install lands inside a mapping of the faulting space, within its protection, never past EOF (checked on every pmap call).</summary>
    [Theory, MemberData(nameof(Designs))]
    public void PrefaultSafety(string design) =>
        Check(design, nameof(PrefaultSafety), PrivateFiles with { SharedPercent = 40 },
            w => Runner.Run(w, design, Checks.Cache | Checks.NoWritableSharing | Checks.Agreement));

    /// <summary>§4.19: mlock faults every page in with copy-on-write broken, IsWired and wired_pages follow it, fork does not inherit it.</summary>
    [Theory, MemberData(nameof(Designs))]
    public void Wiring(string design) =>
        Check(design, nameof(Wiring), General with
        {
            Weights = new(General.Weights) { [OpKind.Wire] = 6, [OpKind.Unwire] = 3 },
        }, w => Runner.Run(w, design, Checks.Wiring | Checks.NoWritableSharing | Checks.Counters));

    internal static readonly Profile Swapping = General with
    {
        NoSwapPercent = 10,
        Weights = Mix((OpKind.MmapAnon, 6), (OpKind.MmapFile, 5), (OpKind.Read, 25), (OpKind.Write, 25),
            (OpKind.Fork, 5), (OpKind.Exit, 2), (OpKind.DontNeed, 2), (OpKind.Mremap, 2), (OpKind.Munmap, 1),
            (OpKind.Mprotect, 2), (OpKind.Wire, 1), (OpKind.Unwire, 1), (OpKind.Evict, 20)),
    };

    /// <summary>
    /// §4.6 (and 20, 21): a page written, paged out and faulted back reads the same bytes
    /// (every access is checked against the oracle), with no file I/O: UVM through exactly
    /// one pagein, the Mach designs through one hard fault whose swap pager window brings
    /// it in (or none, if an earlier window did: a soft fault, no pagein); evictions drop a page exactly when they say so; every swap slot is freed once
    /// every process has exited.
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void SwapRoundTrip(string design) =>
        Check(design, nameof(SwapRoundTrip), Swapping, Checks.SwapRoundTrip | Checks.Agreement | Checks.NoWritableSharing | Checks.Counters);

    /// <summary>
    /// Injected pager latency: while a fault has the map unlocked for file I/O, pages next to
    /// the faulting one are unmapped or moved away (MemVnode.OnLoad). The fault must notice
    /// (revalidation): nothing is installed at an address that is no longer mapped or now
    /// maps something else, the installed set stays exact, and every byte read is right.
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void RevalidationUnderPagerLatency(string design) =>
        Check(design, nameof(RevalidationUnderPagerLatency), PrivateFiles with { SharedPercent = 40 },
            w => Runner.Run(w, design, Checks.Cache | Checks.Agreement | Checks.NoWritableSharing | Checks.Counters,
                interfere: true));

    /// <summary>
    /// §4.12: retry idempotence. The same workload with injected install failures (the
    /// faulting page's EnterCopy/EnterZero answers "already present" once, at random, and the
    /// MMU faults again) gives the same outcome and bytes for every access and ends in the
    /// same model state (installed set, ObjectsAlive, AnonsAlive, SwapSlotsInUse; the slot
    /// count only when every eviction gave the same result, see below). Bytes are
    /// compared wherever Linux specifies one content (a private file page never written may
    /// show an older file version in the lab, and prefault decides which). Both runs end
    /// by reading every readable page once (a superseded fault maps no neighbours, so only
    /// the prefaulted set may differ before that).
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void RetryIdempotence(string design) =>
        Check(design, nameof(RetryIdempotence), General with { MaxOps = 50 }, w =>
        {
            var plain = Runner.Run(w, design, Checks.None, sweep: true);
            var retried = Runner.Run(w, design, Checks.Agreement, injectFailures: true);
            Same(plain, retried, "without injection", $"with {retried.Injections} injected install failures");
            // A superseded fault maps no neighbours, so a page the plain run prefaulted (read-only,
            // clean) may be absent (NotResident) or installed later by a demand fault (writable
            // where it may be, so dirty for the VM): an eviction may then say NotResident or
            // Evicted instead of Clean and hold a slot. Only evictions may differ that way
            // (Clean/Evicted/NotResident), and then the slot count is not compared.
            bool sameEvictions = plain.EvictResults.SequenceEqual(retried.EvictResults);
            for (int i = 0; i < Math.Min(plain.EvictResults.Count, retried.EvictResults.Count); i++)
                if (plain.EvictResults[i] != retried.EvictResults[i]
                    && !(Prefaultish(plain.EvictResults[i]) && Prefaultish(retried.EvictResults[i])))
                    throw new PropertyFailure($"eviction {i}: {plain.EvictResults[i]} without injection, {retried.EvictResults[i]} with" +
                        $"\n  execution without injection:\n    {plain.Trace}\n  execution with injection:\n    {retried.Trace}");
            if (sameEvictions ? plain.FinalState != retried.FinalState : plain.FinalStateNoSwap != retried.FinalStateNoSwap)
                throw new PropertyFailure($"final model state differs.\n  without injection:\n{plain.FinalState}\n  with {retried.Injections} injections:\n{retried.FinalState}" +
                    $"\n  execution without injection:\n    {plain.Trace}\n  execution with injection:\n    {retried.Trace}");
        });

    /// <summary>
    /// §4.20: evicting a page never written since it was last evicted (or a file page never
    /// written privately) writes nothing to swap and counts evict_clean, when it is installed
    /// write-protected (userfaultfd has no dirty bit: a writable private page may have been
    /// written without a fault, so the VM counts it dirty); a page this process
    /// alone wrote is written to swap with its current bytes; reading a dropped page straight
    /// back gives the same bytes.
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void DirtyClean(string design) =>
        Check(design, nameof(DirtyClean), Swapping with { NoSwapPercent = 0, MaxOps = 60 },
            w => Runner.Run(w, design, Checks.DirtyClean | Checks.Agreement));

    /// <summary>
    /// §4.21: swap-slot release per design. The first write to a page this process alone
    /// paged out: FreeBSD and DragonFly free the swap copy in that write fault
    /// (swap_slots_freed_on_dirty; 000: 234–239, and 002: 1022–1026, DragonFly's user
    /// write passing VM_FAULT_DIRTY), UVM keeps the stale slot. mlock over such pages: the
    /// Mach designs' wiring fault does not dirty (000: 191–193; 002: 1099), UVM drops the
    /// anons' slots (swap_slots_freed_on_wire). No other design ever counts either. Every
    /// later page-out writes the page's current bytes.
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void SwapSlotReleasePolicy(string design) =>
        Check(design, nameof(SwapSlotReleasePolicy), Swapping with
        {
            NoSwapPercent = 0, MaxOps = 60,
            Weights = new(Swapping.Weights) { [OpKind.Wire] = 4, [OpKind.Unwire] = 3 },
        }, w => Runner.Run(w, design, Checks.SlotPolicy | Checks.Agreement));

    /// <summary>
    /// §4.23: liveness. Every access resolves within <see cref="Runner.FaultBound"/> faults
    /// (no fault loop: a resolved fault makes progress), every mlock within one fault per page.
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void Liveness(string design) =>
        Check(design, nameof(Liveness), General with
        {
            MaxOps = 60,
            Weights = new(General.Weights) { [OpKind.Evict] = 6, [OpKind.Wire] = 2 },
        }, w => Runner.Run(w, design, Checks.Liveness));

    static readonly Profile Removes = General with
    {
        SharedPercent = 30, ErrorPercent = 0, MaxOps = 60,
        Weights = Mix((OpKind.MmapAnon, 5), (OpKind.MmapFile, 7), (OpKind.Read, 25), (OpKind.Write, 30),
            (OpKind.Fork, 6), (OpKind.Exit, 2), (OpKind.DontNeed, 10), (OpKind.Mremap, 2), (OpKind.Evict, 6), (OpKind.Msync, 2)),
    };

    /// <summary>
    /// §4.25: Linux REMOVE semantics. Right after MADV_DONTNEED, every readable page of the
    /// range reads zeros (private anonymous) or the file's current bytes (private file
    /// mapping), never stale data: also after fork, eviction to swap and shared writes to
    /// the file.
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void RemoveSemantics(string design) =>
        Check(design, nameof(RemoveSemantics), Removes, Checks.RemoveSemantics | Checks.Agreement);

    /// <summary>§4.24: the pages the model believes installed are exactly the pages the page table has.</summary>
    [Theory, MemberData(nameof(Designs))]
    public void ModelPmapAgreement(string design) =>
        Check(design, nameof(ModelPmapAgreement), General, Checks.Agreement);

    /// <summary>§4.22: counter relations (cow_optim ≤ cow_faults, ozfod ≤ zfod, UVM cases ≤ faults, faults = MMU faults ...).</summary>
    [Theory, MemberData(nameof(Designs))]
    public void CounterConservation(string design) =>
        Check(design, nameof(CounterConservation), General, Checks.Counters);

    /// <summary>§4.18: a forbidden access is SIGSEGV, the VM refuses it as well, and nothing changes.</summary>
    [Theory, MemberData(nameof(Designs))]
    public void Protection(string design) =>
        Check(design, nameof(Protection), Protections, Checks.ProtectionProbe | Checks.Counters | Checks.Cache);

    // ---- driver ----

    /// <summary>Cases per property and design: 1,000; LAB_PROPS_LONG=1 makes it 100,000.</summary>
    public static int Cases =>
        Environment.GetEnvironmentVariable("LAB_PROPS_CASES") is { } n && int.TryParse(n, out int c) ? c
        : Environment.GetEnvironmentVariable("LAB_PROPS_LONG") == "1" ? 100_000 : 1_000;

    static void Same(Runner a, Runner b, string an, string bn)
    {
        if (a.Accesses.Count != b.Accesses.Count)
            throw new PropertyFailure($"{an}: {a.Accesses.Count} accesses, {bn}: {b.Accesses.Count}");
        for (int i = 0; i < a.Accesses.Count; i++)
        {
            var (x, y) = (a.Accesses[i], b.Accesses[i]);
            if (x.Outcome != y.Outcome || (x.Exact && y.Exact && x.Hash != y.Hash))
                throw new PropertyFailure(
                    $"access {i} (op {x.Op}, {(x.Write ? "write" : "read")} 0x{x.Va:x}): {an} gave {x.Outcome} " +
                    $"(page hash {x.Hash:x16}), {bn} gave {y.Outcome} (page hash {y.Hash:x16})");
        }
    }

    /// <summary>The property holds for every generated workload run with <paramref name="checks"/>.</summary>
    internal static void Check(string design, string property, Profile profile, Checks checks) =>
        Check(design, property, profile, w => Runner.Run(w, design, checks));

    internal static void Check(string design, string property, Profile profile, Action<Workload> body)
    {
        var config = Config.QuickThrowOnFailure.WithMaxTest(Cases).WithQuietOnSuccess(true)
            .WithName($"{property}[{design}]");
        if (Environment.GetEnvironmentVariable("LAB_PROPS_REPLAY") is { Length: > 0 } replay)
        {
            var parts = replay.Split(',', StringSplitOptions.TrimEntries);
            var rnd = new Rnd(ulong.Parse(parts[0]), ulong.Parse(parts[1]));
            config = config.WithReplay(new Replay(rnd, null));
        }
        // FsCheck's message has the seed, the original and the shrunk workload, and the shrunk
        // run's PropertyFailure (what broke, the resolved execution, the maps).
        FsCheck.Check.One(config, Prop.ForAll(WorkloadGen.Arb(profile), body));
    }
}
