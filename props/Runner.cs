using System.Reflection;
using System.Text;
using Lab.Tests.Vm;
using Lab.Vm;
using VmCore = Lab.Vm.Vm;

namespace Lab.Props;

/// <summary>Which invariants a run checks besides "every access agrees with the oracle".</summary>
[Flags]
public enum Checks
{
    None = 0,
    /// <summary>The page cache equals the oracle's file pages, the backing file its flushed bytes; pte identities.</summary>
    Cache = 1,
    /// <summary>A writable private pte is the only pte of its model page in all live spaces.</summary>
    NoWritableSharing = 2,
    /// <summary>ref_count = entries + shadows, shadow_count = shadows, no dead object reachable, ObjectsAlive exact.</summary>
    Structure = 4,
    /// <summary>Counter relations in every space after every operation.</summary>
    Counters = 8,
    /// <summary>The first fault on a never-touched anonymous page counts exactly one zero fill.</summary>
    ZeroFill = 16,
    /// <summary>Every access the oracle forbids is also refused by the VM (probe) and changes nothing.</summary>
    ProtectionProbe = 32,
    /// <summary>msync: every ever-writable shared page in the range reaches the backing file.</summary>
    Msync = 64,
    /// <summary>The model's installed set (IsInstalled) is exactly what the page table has.</summary>
    Agreement = 128,
    /// <summary>IsWired and wired_pages follow mlock/munlock; a wired private writable page is installed writable.</summary>
    Wiring = 256,
    /// <summary>A page this process paged out to swap reads back with no file I/O: UVM through exactly one pagein, the Mach designs through one hard fault (their swap pager's window) or a soft one (§4.6).</summary>
    SwapRoundTrip = 512,
    /// <summary>No access needs more than <see cref="Runner.FaultBound"/> faults, no mlock more than one per page (§4.23).</summary>
    Liveness = 1024,
    /// <summary>Evictions: a clean page is dropped without a swap write, a dirty one writes its current bytes; re-reads give the same bytes (§4.20).</summary>
    DirtyClean = 2048,
    /// <summary>Per-design swap-slot release on the write fault after a swap-in (FreeBSD, DragonFly) or on wiring (UVM) (§4.21).</summary>
    SlotPolicy = 4096,
    /// <summary>After MADV_DONTNEED every page of the range reads zeros (anonymous) or the file's current bytes (§4.25).</summary>
    RemoveSemantics = 8192,
}

/// <summary>A violated property, with everything needed to read the failure.</summary>
public sealed class PropertyFailure(string message) : Exception(message);

/// <summary>One access's result, for comparing runs (clustering never changes content).</summary>
public readonly record struct AccessRecord(int Op, ulong Va, bool Write, Outcome Outcome, bool Exact, ulong Hash);

/// <summary>
/// Runs a workload on the oracle and on the real VM (one <see cref="VmCore"/>, one
/// <see cref="AddressSpace"/> per process over a <see cref="PropPmap"/>, one
/// <see cref="MemVnode"/> per file shared by all processes: the lab's page cache) and
/// compares them after every operation.
/// </summary>
public sealed partial class Runner
{
    public sealed class Proc
    {
        public required int Id;
        public required Oracle.OProc O;
        public PropPmap Pmap = null!;
        public AddressSpace Space = null!;
        public long Faults, SegvResults, BusResults;
        /// <summary>Pages this process evicted to swap (Evicted) and has not accessed since.</summary>
        public readonly HashSet<ulong> SwappedOut = new();
        /// <summary>Dirty/clean state of private pages (absent: unknown, not checked).</summary>
        public readonly Dictionary<ulong, PageState> St = new();
    }

    /// <summary>
    /// What the runner knows of a page's swap state in one process. Dirty: this process wrote
    /// it and has not forked since (the page is its own). Clean: it was evicted (its bytes are
    /// in a swap slot or the file) and not written since. Swapped: Clean, and the eviction wrote
    /// a Dirty page to swap (the slot is this process's alone).
    /// </summary>
    public enum PageState { Dirty, Clean, Swapped }

    /// <summary>Most faults one access may need (§4.23): a fault, and a write-protect fault after a read-only install.</summary>
    public const int FaultBound = 2;
    public int MaxFaultsPerAccess;
    /// <summary>Injected install failures (§4.12): EnterCopy/EnterZero of the faulting page answered "already present".</summary>
    public int Injections;
    readonly Random? inject;
    readonly ulong injectSalt;
    bool sweep;
    bool injectedThisAccess;
    /// <summary>The model state before the final exits (installed set, ObjectsAlive, AnonsAlive, SwapSlotsInUse).</summary>
    public string FinalState = "";
    public int RemoveProbes, SlotPolicyChecks, CleanEvictions, DirtyEvictions;

    public string Design { get; }
    readonly Workload w;
    readonly Checks checks;
    readonly bool warm;
    readonly int maxProcs;
    // Injected pager latency: map changes made by "another thread" while a fault waits for I/O.
    readonly Random? interference;
    bool interfering;
    ulong faultVa = ulong.MaxValue;   // the page of the fault in progress (MaxValue: none, or mlock's)
    public int Interferences;
    readonly VmCore vm = new();
    readonly MemVnode[] vnodes;
    readonly Dictionary<ulong, int> fileOfIno = new();
    readonly Oracle oracle;
    readonly List<Proc> live = new();
    readonly List<Proc> exited = new();
    readonly List<string> trace = new();
    public readonly List<AccessRecord> Accesses = new();
    /// <summary>Every process's counters, added at its exit (workload statistics).</summary>
    public readonly VmCounters Totals = new();
    public int Forks, Skipped, Wires, Evictions, SwapRoundTrips;
    readonly MemSwap? swap;
    int nextPid;
    int opIndex = -1;

    // What the VM is doing right now (prefault safety: installs only into the faulting space).
    Proc? faulting;
    Proc? forkProtecting;
    Proc? evicting;

    Runner(Workload w, string design, Checks checks, bool warm, int maxProcs, bool interfere = false, bool injectFailures = false)
    {
        this.w = w;
        if (injectFailures) { inject = new Random(0); injectSalt = (ulong)w.Files[0].Seed * 0x9E3779B97F4A7C15UL; }
        if (interfere) interference = new Random(w.Files[0].Seed ^ w.Ops.Length);
        Design = design;
        this.checks = checks;
        this.warm = warm;
        this.maxProcs = maxProcs;
        var contents = new byte[w.Files.Length][];
        vnodes = new MemVnode[w.Files.Length];
        for (int f = 0; f < w.Files.Length; f++)
        {
            var spec = w.Files[f];
            var bytes = new byte[spec.Size];
            new Random(spec.Seed).NextBytes(bytes);
            contents[f] = bytes;
            var v = new MemVnode(spec.Size, _ => 0);
            bytes.CopyTo(v.Data, 0);
            if (w.Error != null && w.Error.File == f) v.ErrorAt = w.Error.Pindex;
            if (interfere) v.OnLoad = (_, _) => Interfere();
            vnodes[f] = v;
            fileOfIno[v.Ino] = f;
        }
        oracle = new Oracle(w, contents);
        if (!w.NoSwap) vm.Swap = swap = new MemSwap();
    }

    /// <summary>The FreeBSD lineage (objects and shadow chains) versus UVM (amaps and anons).</summary>
    public static bool IsUvm(string design) => design.StartsWith("uvm", StringComparison.Ordinal);

    public static Runner Run(Workload w, string design, Checks checks, bool warmCache = false, int maxProcs = 5,
        bool interfere = false, bool injectFailures = false, bool sweep = false)
    {
        var r = new Runner(w, design, checks, warmCache, maxProcs, interfere, injectFailures) { sweep = sweep };
        r.Execute();
        return r;
    }

    void Execute()
    {
        if (warm)
            for (int f = 0; f < vnodes.Length; f++)
                for (int p = 0; p < w.Files[f].Pages; p++)
                    if (w.Error == null || w.Error.File != f || w.Error.Pindex != p)
                        vnodes[f].LoadPages(p, 1);
        NewProcess();
        for (opIndex = 0; opIndex < w.Ops.Length; opIndex++)
        {
            if (live.Count == 0) { trace.Add($"{opIndex,2}: (no process left) {w.Ops[opIndex]}"); continue; }
            Apply(w.Ops[opIndex]);
            AfterOp();
        }
        opIndex = w.Ops.Length;
        if (inject != null || sweep)
        {
            // Read every readable page once more (prefault may differ between runs; demand faults may not).
            foreach (var p in live.ToList())
                foreach (var vpn in p.O.Pages.Keys.ToList())
                    if (oracle.Expect(p.O, vpn, false) == Outcome.Ok) Access(p, vpn * PropPmap.Page, false, 0, 1, 0);
            AfterOp();
        }
        FinalState = DescribeState();
        // Everyone exits; the VM must return to its baseline.
        while (live.Count > 0) ExitProc(live[0], "final exit");
        AfterOp();
        if (vm.ObjectsAlive != 0) Fail($"after every process exited, Vm.ObjectsAlive = {vm.ObjectsAlive} (want 0)");
        if (typeof(VmCore).GetProperty("AnonsAlive", BindingFlags.Public | BindingFlags.Instance) is { } anons
            && Convert.ToInt64(anons.GetValue(vm)) is var a && a != 0)
            Fail($"after every process exited, Vm.AnonsAlive = {a} (want 0)");
        if (vm.SwapSlotsInUse != 0 || swap is { InUse: not 0 })
            Fail($"after every process exited, Vm.SwapSlotsInUse = {vm.SwapSlotsInUse}, the device holds {swap?.InUse ?? 0} (want 0)");
        foreach (var p in exited) CheckCounters(p, final: true);
    }

    /// <summary>Every Evict result, in order.</summary>
    public readonly List<EvictResult> EvictResults = new();
    /// <summary>The model state without SwapSlotsInUse.</summary>
    public string FinalStateNoSwap => FinalState[..FinalState.LastIndexOf(", SwapSlotsInUse", StringComparison.Ordinal)];
    /// <summary>The resolved execution (for failures that compare two runs).</summary>
    public string Trace => string.Join("\n    ", trace.TakeLast(80));

    string DescribeState()
    {
        var sb = new StringBuilder();
        foreach (var p in live)
        {
            // The readable pages (the final sweep read them all; a PROT_NONE page may hold a prefaulted page or not).
            sb.Append($"pid{p.Id} installed:");
            foreach (var vpn in p.O.Pages.Keys)
                if (oracle.Expect(p.O, vpn, false) == Outcome.Ok && p.Space.IsInstalled(vpn * PropPmap.Page)) sb.Append($" 0x{vpn * PropPmap.Page:x}");
            sb.Append($"; present:");
            foreach (var vpn in p.Pmap.Ptes.Keys.Order())
                if (oracle.Expect(p.O, vpn, false) == Outcome.Ok) sb.Append($" 0x{vpn * PropPmap.Page:x}");
            sb.Append('\n');
        }
        sb.Append($"ObjectsAlive {vm.ObjectsAlive}, AnonsAlive {vm.AnonsAlive}, SwapSlotsInUse {vm.SwapSlotsInUse}");
        return sb.ToString();
    }

    /// <summary>The pmap asks whether to fail this install (injection): only the faulting page, once per access.</summary>
    public Injected InjectInstallFailure(ulong va, int pages, bool writable)
    {
        if (inject == null || faulting == null || pages != 1 || va != faultVa || injectedThisAccess) return Injected.No;
        // Decided by the operation itself (not a running random stream), so a shrunk workload keeps its injections.
        var op = opIndex < w.Ops.Length ? w.Ops[opIndex] : null;
        ulong h = injectSalt ^ va;
        if (op != null)
            foreach (var x in new long[] { (int)op.Kind, op.P, op.Slot, op.Page, op.K, op.Off, op.Len, op.Value, op.Hit ? 1 : 0 })
                h = (h ^ (ulong)x) * 0x100000001B3UL;
        h ^= h >> 29; h *= 0xBF58476D1CE4E5B9UL; h ^= h >> 32;
        if ((h & 1) != 0) return Injected.No;
        injectedThisAccess = true;
        Injections++;
        var how = writable && (h & 2) == 0 ? Injected.PresentReadOnly : Injected.Present;
        trace.Add($"      [injected] install at 0x{va:x} reports \"already present\" ({how})");
        return how;
    }

    // ---- processes ----

    Proc NewProcess()
    {
        var p = new Proc { Id = nextPid++, O = Oracle.NewProc(nextPid - 1) };
        p.Pmap = new PropPmap(this, p);
        p.Space = vm.CreateSpace(p.Pmap, Resolvers.Create(Design));
        live.Add(p);
        return p;
    }

    void Skip(string what)
    {
        trace.Add(what);
        Skipped++;
    }

    Proc Pick(int i) => live[i % live.Count];

    void ExitProc(Proc p, string why)
    {
        trace.Add($"{opIndex,2}: pid{p.Id}.exit() [{why}]");
        p.Space.Counters.AddTo(Totals);
        p.SwappedOut.Clear();
        p.Space.Destroy();
        p.Pmap.Clear();
        live.Remove(p);
        exited.Add(p);
    }

    // ---- operations ----

    void Apply(Op op)
    {
        var p = Pick(op.P);
        ulong start = Layout.Va(op.Slot, op.Page);
        ulong len = (ulong)op.N * PropPmap.Page;
        ulong vpn = Oracle.Vpn(start);
        string who = $"{opIndex,2}: pid{p.Id}.";
        // Whatever maps, unmaps or moves a range ends the swap round trips of its pages.
        if (op.Kind is OpKind.MmapAnon or OpKind.MmapFile or OpKind.Munmap or OpKind.DontNeed or OpKind.Mremap or OpKind.Wire)
        {
            p.SwappedOut.RemoveWhere(q => q >= vpn && q < vpn + (ulong)op.N);
            if (op.Kind != OpKind.Wire) DropStates(p, vpn, op.N);
        }
        if (op.Kind == OpKind.Mremap)
        {
            ulong t = Oracle.Vpn(Layout.Va(op.ToSlot, op.ToPage));
            p.SwappedOut.RemoveWhere(q => q >= t && q < t + (ulong)op.N);
            DropStates(p, t, op.N);
        }
        switch (op.Kind)
        {
            case OpKind.MmapAnon:
                trace.Add($"{who}mmap_anon(0x{start:x}, {op.N}p, {op.Prot})");
                p.Pmap.Zap(start, len);
                p.Space.MapAnon(start, len, op.Prot);
                oracle.MapAnon(p.O, vpn, op.N, op.Prot);
                break;
            case OpKind.MmapFile:
            {
                int f = op.File % vnodes.Length;
                trace.Add($"{who}mmap_file(0x{start:x}, {op.N}p, {op.Prot}, f{f} page {op.FilePage}, {(op.Shared ? "shared" : "private")})");
                p.Pmap.Zap(start, len);
                p.Space.MapFile(start, len, op.Prot, vnodes[f], (long)op.FilePage * PropPmap.Page, op.Shared);
                oracle.MapFile(p.O, vpn, op.N, op.Prot, f, op.FilePage, op.Shared);
                if (!op.Shared) for (int i = 0; i < op.N; i++) p.St[vpn + (ulong)i] = PageState.Clean;   // the file's bytes
                break;
            }
            case OpKind.Read:
            case OpKind.Write:
            {
                ulong va = start;
                if (op.Hit && p.O.Pages.Count > 0)
                    va = p.O.Pages.Keys.ElementAt(op.K % p.O.Pages.Count) * (ulong)PropPmap.Page;
                Access(p, va, op.Kind == OpKind.Write, op.Off, op.Len, op.Value);
                break;
            }
            case OpKind.Fork:
                if (live.Count >= maxProcs) { Skip($"{who}fork() [skipped: {live.Count} processes]"); break; }
                Fork(p);
                break;
            case OpKind.Exit:
                ExitProc(p, "exit");
                break;
            case OpKind.Munmap:
                trace.Add($"{who}munmap(0x{start:x}, {op.N}p)");
                p.Pmap.Zap(start, len);
                p.Space.Unmap(start, len);
                Oracle.Unmap(p.O, vpn, op.N);
                break;
            case OpKind.DontNeed:
                if (Enumerable.Range(0, op.N).Any(i => p.O.Pages.TryGetValue(vpn + (ulong)i, out var pw) && pw.Wired))
                {
                    Skip($"{who}madvise(0x{start:x}, {op.N}p, MADV_DONTNEED) [skipped: EINVAL, locked pages]");
                    break;
                }
                trace.Add($"{who}madvise(0x{start:x}, {op.N}p, MADV_DONTNEED)");
                p.Pmap.Zap(start, len);
                p.Space.Remove(start, len);
                oracle.DontNeed(p.O, vpn, op.N);
                for (int i = 0; i < op.N; i++)
                    if (p.O.Pages.TryGetValue(vpn + (ulong)i, out var pd) && pd.Kind == PageKind.PrivateFile) p.St[vpn + (ulong)i] = PageState.Clean;
                if ((checks & Checks.RemoveSemantics) != 0) ProbeAfterRemove(p, vpn, op.N);
                break;
            case OpKind.Mprotect:
                if (!Oracle.AllMapped(p.O, vpn, op.N)) { Skip($"{who}mprotect(0x{start:x}, {op.N}p) [skipped: ENOMEM, hole]"); break; }
                trace.Add($"{who}mprotect(0x{start:x}, {op.N}p, {op.Prot})");
                if ((op.Prot & Prot.Write) == 0) p.Pmap.DropWrite(start, len);
                p.Space.Protect(start, len, op.Prot);
                Oracle.Protect(p.O, vpn, op.N, op.Prot);
                break;
            case OpKind.Mremap:
            {
                ulong to = Layout.Va(op.ToSlot, op.ToPage);
                ulong tvpn = Oracle.Vpn(to);
                if (!Oracle.AllMapped(p.O, vpn, op.N) || (start < to + len && to < start + len))
                {
                    Skip($"{who}mremap(0x{start:x}, {op.N}p -> 0x{to:x}) [skipped: hole or overlap]");
                    break;
                }
                trace.Add($"{who}mremap(0x{start:x}, {op.N}p -> 0x{to:x})");
                p.Pmap.Move(start, to, len);
                p.Space.Remap(start, to, len);
                Oracle.Remap(p.O, vpn, tvpn, op.N);
                break;
            }
            case OpKind.Grow:
            {
                int extra = op.ToPage;
                ulong end = start + len, newEnd = end + (ulong)extra * PropPmap.Page;
                if (op.Page + op.N + extra > Layout.SlotPages || !Oracle.AllMapped(p.O, vpn, op.N)
                    || !Oracle.NoneMapped(p.O, Oracle.Vpn(end), extra))
                {
                    Skip($"{who}mremap_grow(0x{start:x}, {op.N}p, +{extra}p) [skipped: not growable]");
                    break;
                }
                trace.Add($"{who}mremap_grow(0x{start:x}, {op.N}p, +{extra}p)");
                p.Pmap.Zap(end, newEnd - end);
                p.Space.Grow(start, len, newEnd - start);
                oracle.Grow(p.O, Oracle.Vpn(end) - 1, extra);
                break;
            }
            case OpKind.Msync:
                Msync(p, start, len, who);
                break;
            case OpKind.Wire:
                Wire(p, start, op.N, who);
                break;
            case OpKind.Unwire:
                trace.Add($"{who}munlock(0x{start:x}, {op.N}p)");
                p.Space.Unwire(start, len);
                for (int i = 0; i < op.N; i++)
                    if (p.O.Pages.TryGetValue(vpn + (ulong)i, out var pu)) pu.Wired = false;
                break;
            case OpKind.Advise:
                trace.Add($"{who}madvise(0x{start:x}, {op.N}p, {op.Advice})");
                p.Space.Advise(start, len, op.Advice);
                break;
            case OpKind.Evict:
                if (p.O.Pages.Count == 0) { Skip($"{who}evict() [skipped: nothing mapped]"); break; }
                Evict(p, p.O.Pages.Keys.ElementAt(op.K % p.O.Pages.Count), who, reread: op.K % 2 == 0);
                break;
        }
    }

    static void DropStates(Proc p, ulong vpn, int n)
    {
        for (int i = 0; i < n; i++) p.St.Remove(vpn + (ulong)i);
    }

    /// <summary>§4.25: right after MADV_DONTNEED, each readable page reads zeros (anonymous) or the file's current bytes.</summary>
    void ProbeAfterRemove(Proc p, ulong vpn0, int n)
    {
        for (int i = 0; i < n; i++)
            if (p.Pmap.Ptes.ContainsKey(vpn0 + (ulong)i))
                Fail($"pid{p.Id} 0x{(vpn0 + (ulong)i) * PropPmap.Page:x} is still present after MADV_DONTNEED");
        for (int i = 0; i < n; i++)
        {
            ulong vpn = vpn0 + (ulong)i;
            if (!p.O.Pages.TryGetValue(vpn, out var pg) || pg.Kind == PageKind.SharedFile) continue;
            if (oracle.Expect(p.O, vpn, false) != Outcome.Ok) continue;
            ulong va = vpn * PropPmap.Page;
            Access(p, va, false, 0, 1, 0);
            RemoveProbes++;
            var got = p.Pmap.Ptes[vpn].Bytes;
            if (pg.Kind == PageKind.Anon)
            {
                int j = got.AsSpan().IndexOfAnyExcept((byte)0);
                if (j >= 0) Fail($"pid{p.Id} read(0x{va:x}) after MADV_DONTNEED of private anonymous memory: byte {j} is 0x{got[j]:x2}, want zeros (stale data)");
            }
            else
            {
                var want = oracle.Files[pg.File].Current(pg.Pindex);
                int j = got.AsSpan().CommonPrefixLength(want);
                if (j != PropPmap.Page)
                    Fail($"pid{p.Id} read(0x{va:x}) after MADV_DONTNEED of a private file mapping: byte {j} is 0x{got[j]:x2}, " +
                         $"f{pg.File} page {pg.Pindex} now holds 0x{want[j]:x2} (stale data)");
            }
        }
    }

    // ---- failure ----

    static ulong Fnv(byte[] b)
    {
        ulong h = 14695981039346656037;
        foreach (var x in b) h = (h ^ x) * 1099511628211;
        return h;
    }

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    void Fail(string why)
    {
        var sb = new StringBuilder();
        sb.Append($"[{Design}] {why}\n  at operation {(opIndex >= w.Ops.Length ? "end (exit all)" : opIndex.ToString())}");
        sb.Append($"\n  execution (resolved addresses; slot s = 0x{Layout.Base:x} + s*0x{Layout.SlotPages * PropPmap.Page:x}):");
        foreach (var t in trace.TakeLast(60)) sb.Append("\n    ").Append(t);
        foreach (var p in live)
        {
            sb.Append($"\n  pid{p.Id} maps:");
            foreach (var line in p.Space.DescribeMaps().Split('\n', StringSplitOptions.RemoveEmptyEntries))
                sb.Append("\n    ").Append(line);
        }
        throw new PropertyFailure(sb.ToString());
    }
}
