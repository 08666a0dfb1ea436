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
    /// <summary>A page this process paged out to swap reads back through exactly one pagein, with no file I/O (§4.6).</summary>
    SwapRoundTrip = 512,
    /// <summary>No access needs more than <see cref="Runner.FaultBound"/> faults, no mlock more than one per page (§4.23).</summary>
    Liveness = 1024,
    /// <summary>Evictions: a clean page is dropped without a swap write, a dirty one writes its current bytes; re-reads give the same bytes (§4.20).</summary>
    DirtyClean = 2048,
    /// <summary>Per-design swap-slot release on the write fault after a swap-in (FreeBSD) or on wiring (UVM) (§4.21).</summary>
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
public sealed class Runner
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

    /// <summary>The resolved execution (for failures that compare two runs).</summary>
    /// <summary>Every Evict result, in order.</summary>
    public readonly List<EvictResult> EvictResults = new();
    /// <summary>The model state without SwapSlotsInUse.</summary>
    public string FinalStateNoSwap => FinalState[..FinalState.LastIndexOf(", SwapSlotsInUse", StringComparison.Ordinal)];
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

    /// <summary>
    /// A page-out. It changes no byte (the oracle is not told); the page must leave the
    /// page table exactly when the VM says Evicted or Clean, and the result must fit what
    /// the page is.
    /// </summary>
    void Evict(Proc p, ulong vpn, string who, bool reread = false)
    {
        ulong va = vpn * PropPmap.Page;
        bool present = p.Pmap.Ptes.ContainsKey(vpn);
        var pg = p.O.Pages[vpn];
        byte[]? before = present ? (byte[])p.Pmap.Ptes[vpn].Bytes.Clone() : null;
        bool wasWritable = present && p.Pmap.Ptes[vpn].Writable;
        int writes0 = swap?.Writes ?? 0;
        long clean0 = p.Space.Counters.evict_clean;
        evicting = p;
        EvictResult r;
        try { r = p.Space.Evict(va); }
        finally { evicting = null; }
        trace.Add($"{who}evict(0x{va:x}) -> {r}");
        EvictResults.Add(r);
        bool gone = !p.Pmap.Ptes.ContainsKey(vpn);
        switch (r)
        {
            case EvictResult.Evicted:
            case EvictResult.Clean:
                if (!present) Fail($"pid{p.Id} evict(0x{va:x}) -> {r}, but the page was not present");
                if (!gone) Fail($"pid{p.Id} evict(0x{va:x}) -> {r}, but the page is still present");
                if (pg.Wired) Fail($"pid{p.Id} evict(0x{va:x}) -> {r} on a wired page");
                if (r == EvictResult.Evicted)
                {
                    if (swap == null) Fail($"pid{p.Id} evict(0x{va:x}) -> Evicted without a swap device");
                    if (pg.Kind == PageKind.SharedFile) Fail($"pid{p.Id} evict(0x{va:x}) wrote a shared file page to swap");
                    p.SwappedOut.Add(vpn);
                }
                Evictions++;
                break;
            case EvictResult.NotResident:
                if (present) Fail($"pid{p.Id} evict(0x{va:x}) -> NotResident, but the page is present");
                break;
            case EvictResult.Wired:
                if (!pg.Wired) Fail($"pid{p.Id} evict(0x{va:x}) -> Wired, the page is not wired");
                break;
            case EvictResult.NoSwap:
                if (swap != null) Fail($"pid{p.Id} evict(0x{va:x}) -> NoSwap with a swap device");
                if (gone) Fail($"pid{p.Id} evict(0x{va:x}) -> NoSwap, but the page left the page table");
                break;
            default:
                Fail($"pid{p.Id} evict(0x{va:x}) -> {r} with nothing else running");
                break;
        }
        if ((checks & (Checks.DirtyClean | Checks.SlotPolicy)) != 0 && r is EvictResult.Evicted or EvictResult.Clean)
            CheckEviction(p, vpn, pg, r, before!, wasWritable, writes0, clean0, reread && (checks & Checks.DirtyClean) != 0);
    }

    /// <summary>
    /// §4.20/21: a page known clean (never written since it was last evicted, or a file page
    /// never written privately) is dropped without a swap write (evict_clean); a page known
    /// dirty (written by this process alone since) is written to swap, and every swap write
    /// holds the page's current bytes. Then, sometimes, read it straight back: the same bytes.
    /// </summary>
    void CheckEviction(Proc p, ulong vpn, Oracle.OPage pg, EvictResult r, byte[] before, bool wasWritable, int writes0, long clean0, bool reread)
    {
        ulong va = vpn * PropPmap.Page;
        int writes = (swap?.Writes ?? 0) - writes0;
        long cleans = p.Space.Counters.evict_clean - clean0;
        var st = p.St.TryGetValue(vpn, out var s0) ? s0 : (PageState?)null;
        bool kindClean = pg.Kind == PageKind.SharedFile;
        string why = kindClean ? "a shared file page" : $"state {st}";
        if (r == EvictResult.Clean && (writes != 0 || cleans != 1))
            Fail($"pid{p.Id} evict(0x{va:x}) -> Clean, but {writes} swap writes and evict_clean +{cleans} (want 0 and +1)");
        if (r == EvictResult.Evicted)
        {
            if (writes != 1) Fail($"pid{p.Id} evict(0x{va:x}) -> Evicted with {writes} swap writes (want 1)");
            var slot = new byte[PropPmap.Page];
            if (swap!.Read(swap.LastSlot, slot) != SwapReadResult.Ok) Fail($"pid{p.Id} evict(0x{va:x}): the slot just written cannot be read");
            int j = slot.AsSpan().CommonPrefixLength(before);
            if (j != PropPmap.Page)
                Fail($"pid{p.Id} evict(0x{va:x}) wrote stale bytes to swap: byte {j} is 0x{slot[j]:x2}, the page holds 0x{before[j]:x2}");
            DirtyEvictions++;
        }
        else CleanEvictions++;
        // userfaultfd has no dirty bit: a private page installed writable may have been written
        // without a fault, so the VM must count it dirty. Clean is required only of a page
        // installed write-protected (or a shared one, which never goes to swap).
        bool knownClean = kindClean || (!wasWritable && st is PageState.Clean or PageState.Swapped);
        if (knownClean && r != EvictResult.Clean)
            Fail($"pid{p.Id} evict(0x{va:x}) of a clean page ({why}) -> {r}, {writes} swap writes (want Clean, no I/O)");
        if (st == PageState.Dirty && !kindClean && r != EvictResult.Evicted)
            Fail($"pid{p.Id} evict(0x{va:x}) of a page this process alone wrote since it was last clean -> {r} (want Evicted: its bytes written to swap)");
        p.St[vpn] = r == EvictResult.Evicted && st == PageState.Dirty ? PageState.Swapped : PageState.Clean;
        if (!reread || oracle.Expect(p.O, vpn, false) != Outcome.Ok || !oracle.Exact(p.O, vpn)) return;
        Access(p, va, false, 0, 1, 0);
        var got = p.Pmap.Ptes[vpn].Bytes;
        int k = got.AsSpan().CommonPrefixLength(before);
        if (k != PropPmap.Page)
            Fail($"pid{p.Id} re-read of 0x{va:x} after evict -> {r}: byte {k} is 0x{got[k]:x2}, it held 0x{before[k]:x2}");
    }

    void Fork(Proc parent)
    {
        var child = new Proc { Id = nextPid++, O = Oracle.Fork(parent.O, nextPid - 1) };
        trace.Add($"{opIndex,2}: pid{parent.Id}.fork() -> pid{child.Id}");
        child.Pmap = new PropPmap(this, child);
        forkProtecting = parent;
        try { parent.Space.ForkProtect(); }
        finally { forkProtecting = null; }
        parent.Pmap.CopyInto(child.Pmap);
        child.Space = parent.Space.Fork(child.Pmap);
        // The pages are shared now: a Dirty page is no longer this process's alone, a Swapped slot neither.
        foreach (var (vpn, st) in parent.St.ToList())
        {
            if (st == PageState.Dirty) { parent.St.Remove(vpn); continue; }
            parent.St[vpn] = child.St[vpn] = PageState.Clean;
        }
        live.Add(child);
        Forks++;
    }

    /// <summary>
    /// mlock as the VM does it: every mapped page in the range is faulted in, in address
    /// order, private writable ones for writing (copy-on-write broken up front); the first
    /// page that fails ends it and unwires the whole range.
    /// </summary>
    void Wire(Proc p, ulong start, int n, string who)
    {
        ulong vpn0 = Oracle.Vpn(start);
        bool expect = true;
        int upTo = n;
        for (int i = 0; i < n && expect; i++)
        {
            if (!p.O.Pages.TryGetValue(vpn0 + (ulong)i, out var pg) || pg.Prot == Prot.None) continue;
            bool write = (pg.Prot & Prot.Write) != 0 && pg.Kind != PageKind.SharedFile;
            if (oracle.Expect(p.O, vpn0 + (ulong)i, write) != Outcome.Ok) { expect = false; upTo = i; break; }
        }
        var c = p.Space.Counters;
        long f0 = c.v_vm_faults, segv0 = c.sigsegv, bus0 = c.sigbus;
        long dirty0 = c.swap_slots_freed_on_dirty, onWire0 = c.swap_slots_freed_on_wire;
        int swapped = 0;
        for (int i = 0; i < n; i++)
            if (p.St.TryGetValue(vpn0 + (ulong)i, out var s0) && s0 == PageState.Swapped
                && p.O.Pages.TryGetValue(vpn0 + (ulong)i, out var ps) && (ps.Prot & Prot.Write) != 0 && !ps.Wired)
                swapped++;
        faulting = p;
        bool got;
        try { got = p.Space.Wire(start, (ulong)n * PropPmap.Page); }
        finally { faulting = null; }
        DropStates(p, vpn0, n);
        if ((checks & Checks.Liveness) != 0 && c.v_vm_faults - f0 > n)
            Fail($"pid{p.Id} mlock(0x{start:x}, {n}p) took {c.v_vm_faults - f0} faults (bound: one per page)");
        if ((checks & Checks.SlotPolicy) != 0 && expect && swapped > 0)
        {
            SlotPolicyChecks++;
            long dd = c.swap_slots_freed_on_dirty - dirty0, dw = c.swap_slots_freed_on_wire - onWire0;
            if (Design == "freebsd" && dd < swapped)
                Fail($"pid{p.Id} mlock(0x{start:x}, {n}p) over {swapped} pages swapped out from this process alone: swap_slots_freed_on_dirty +{dd} (FreeBSD: the wiring write fault frees each copy)");
            if (IsUvm(Design) && dw < swapped)
                Fail($"pid{p.Id} mlock(0x{start:x}, {n}p) over {swapped} pages swapped out from this process alone: swap_slots_freed_on_wire +{dw} (UVM: wiring drops each anon's slot)");
        }
        p.Faults += c.v_vm_faults - f0;
        p.SegvResults += c.sigsegv - segv0;
        p.BusResults += c.sigbus - bus0;
        trace.Add($"{who}mlock(0x{start:x}, {n}p) -> {got}");
        if (got != expect) Fail($"pid{p.Id} mlock(0x{start:x}, {n}p) returned {got}, the oracle says {expect}");
        if (got) Wires++;
        for (int i = 0; i < upTo; i++)
        {
            ulong q = vpn0 + (ulong)i;
            if (!p.O.Pages.TryGetValue(q, out var pg) || pg.Prot == Prot.None) continue;
            oracle.Touch(p.O, q);
            if ((pg.Prot & Prot.Write) != 0 && pg.Kind != PageKind.SharedFile)
                oracle.Write(p.O, q, 0, 0, 0);   // a private copy now, with the same bytes
        }
        for (int i = 0; i < n; i++)
            if (p.O.Pages.TryGetValue(vpn0 + (ulong)i, out var pg)) pg.Wired = got;
        if (!got || (checks & Checks.Wiring) == 0) return;
        for (int i = 0; i < n; i++)
        {
            ulong q = vpn0 + (ulong)i;
            if (!p.O.Pages.TryGetValue(q, out var pg) || pg.Prot == Prot.None) continue;
            if (!p.Pmap.Ptes.TryGetValue(q, out var pte))
                Fail($"pid{p.Id} 0x{q * PropPmap.Page:x}: not present after mlock");
            else if ((pg.Prot & Prot.Write) != 0 && pg.Kind != PageKind.SharedFile && !pte.Writable)
                Fail($"pid{p.Id} 0x{q * PropPmap.Page:x}: a wired private writable page is still write-protected (copy-on-write not broken)");
        }
    }

    void CheckWiring()
    {
        foreach (var p in live)
        {
            long wired = 0;
            foreach (var (vpn, pg) in p.O.Pages)
            {
                if (pg.Wired) wired++;
                if (p.Space.IsWired(vpn * PropPmap.Page) != pg.Wired)
                    Fail($"pid{p.Id} 0x{vpn * PropPmap.Page:x}: IsWired {!pg.Wired}, the oracle says {pg.Wired}");
                if (p.Space.IsEvictable(vpn * PropPmap.Page) == pg.Wired)
                    Fail($"pid{p.Id} 0x{vpn * PropPmap.Page:x}: IsEvictable {!pg.Wired} on a page {(pg.Wired ? "" : "not ")}wired");
            }
            if (p.Space.Counters.wired_pages != wired)
                Fail($"pid{p.Id}: wired_pages = {p.Space.Counters.wired_pages}, {wired} mapped pages are wired");
        }
    }

    void Msync(Proc p, ulong start, ulong len, string who)
    {
        trace.Add($"{who}msync(0x{start:x}, {len / PropPmap.Page}p)");
        var ranges = p.Space.SharedRanges(start, len);
        var got = new HashSet<(int, long)>();
        foreach (var (vn, first, count) in ranges)
        {
            if (!fileOfIno.TryGetValue(vn.Ino, out int f)) Fail($"SharedRanges returned an unknown vnode {vn.Ino}");
            for (long q = first; q < first + count; q++) got.Add((f, q));
            vn.MarkDirty(first, count);
            vn.Flush();
        }
        // The oracle's backing file: what the VM flushed is the page cache now.
        foreach (var (f, q) in got)
        {
            var file = oracle.Files[f];
            if (q < 0 || q >= file.Pages) Fail($"SharedRanges returned f{f} page {q}, past EOF ({file.Pages} pages)");
            int n = Math.Min(PropPmap.Page, file.Size - (int)q * PropPmap.Page);
            Array.Copy(file.Current((int)q), 0, file.Flushed, q * PropPmap.Page, n);
        }
        if ((checks & Checks.Msync) == 0) return;
        ulong vpn = Oracle.Vpn(start);
        for (ulong i = 0; i < len / PropPmap.Page; i++)
            if (p.O.Pages.TryGetValue(vpn + i, out var pg) && pg.Kind == PageKind.SharedFile && pg.EverWritable
                && pg.Pindex < oracle.Files[pg.File].Pages && !got.Contains((pg.File, pg.Pindex)))
                Fail($"msync of 0x{start:x}+{len / PropPmap.Page}p did not write back f{pg.File} page {pg.Pindex} " +
                     $"(mapped shared and writable at 0x{(vpn + i) * PropPmap.Page:x})");
    }

    // ---- the MMU ----

    void Access(Proc p, ulong va, bool write, int off, int len, byte value)
    {
        ulong vpn = Oracle.Vpn(va);
        var expect = oracle.Expect(p.O, vpn, write);
        string what = write ? $"write(0x{va:x} +{off}, {len} bytes of 0x{value:x2})" : $"read(0x{va:x})";
        bool roundTrip = p.SwappedOut.Remove(vpn);
        long pageins0 = p.Space.Counters.pageins, io0 = vnodes.Sum(v => (long)v.IoCalls);
        injectedThisAccess = false;
        bool policy = (checks & Checks.SlotPolicy) != 0 && write && p.St.TryGetValue(vpn, out var st0) && st0 == PageState.Swapped;
        long inUse0 = vm.SwapSlotsInUse, freed0 = p.Space.Counters.swap_slots_freed_on_dirty;
        var got = Mmu(p, va, write, expect);
        if (policy && got == Outcome.Ok)
        {
            SlotPolicyChecks++;
            long dUse = vm.SwapSlotsInUse - inUse0, dFreed = p.Space.Counters.swap_slots_freed_on_dirty - freed0;
            bool frees = Design == "freebsd";
            if (frees ? dUse != -1 || dFreed != 1 : dUse != 0 || dFreed != 0)
                Fail($"pid{p.Id} first write(0x{va:x}) after a page-out of a page this process alone held: SwapSlotsInUse {dUse:+0;-0;0}, " +
                     $"swap_slots_freed_on_dirty +{dFreed} (want {(frees ? "-1 and +1: FreeBSD frees the swap copy on the write fault" : "0 and +0: the stale slot stays until the next page-out")})");
        }
        if (write && got == Outcome.Ok) p.St[vpn] = PageState.Dirty;
        if (roundTrip && got == Outcome.Ok)
        {
            SwapRoundTrips++;
            long pageins = p.Space.Counters.pageins - pageins0, io = vnodes.Sum(v => (long)v.IoCalls) - io0;
            if ((checks & Checks.SwapRoundTrip) != 0 && (pageins != 1 || io != 0))
                Fail($"pid{p.Id} {what} of a page it paged out: {pageins} pageins (want 1), {io} file reads (want 0)");
        }
        trace.Add($"{opIndex,2}: pid{p.Id}.{what} -> {got}");
        if (got != expect)
            Fail($"pid{p.Id} {what}: got {got}, the oracle says {expect}");
        bool exact = got != Outcome.Ok || oracle.Exact(p.O, vpn);
        ulong hash = 0;
        if (got == Outcome.Ok)
        {
            var pte = p.Pmap.Ptes[vpn];
            if (write)
            {
                pte.Bytes.AsSpan(off, len).Fill(value);
                oracle.Write(p.O, vpn, off, len, value);
            }
            else
            {
                if (oracle.CheckRead(p.O, vpn, pte.Bytes) is { } wrong)
                    Fail($"pid{p.Id} read(0x{va:x}): {wrong}");
                oracle.Touch(p.O, vpn);
                hash = Fnv(pte.Bytes);
            }
        }
        Accesses.Add(new AccessRecord(opIndex, va, write, got, exact, hash));
    }

    Outcome Mmu(Proc p, ulong va, bool write, Outcome expect)
    {
        ulong vpn = Oracle.Vpn(va);
        // The kernel checks the VMA itself: no mapping or a forbidden access never reaches userfaultfd.
        if (expect == Outcome.SigSegv)
        {
            if ((checks & Checks.ProtectionProbe) != 0) Probe(p, va, write);
            return Outcome.SigSegv;
        }
        for (int tries = 0; tries < 4; tries++)
        {
            if (tries > MaxFaultsPerAccess) MaxFaultsPerAccess = tries;
            if ((checks & Checks.Liveness) != 0 && tries > FaultBound + (injectedThisAccess ? 1 : 0))
                Fail($"pid{p.Id} access at 0x{va:x} (write {write}) took {tries} faults and still faults (bound: {FaultBound} per access)");
            if (p.Pmap.Poisoned.Contains(vpn)) return Outcome.SigBus;
            p.Pmap.Ptes.TryGetValue(vpn, out var pte);
            if (pte != null && (!write || pte.Writable)) return Outcome.Ok;
            var access = pte == null ? (write ? FaultAccess.Write : FaultAccess.Read) : FaultAccess.WriteProtect;
            var r = Fault(p, va, access);
            if (r == FaultResult.SigSegv)
                Fail($"pid{p.Id} {access} fault at 0x{va:x}: the VM answered SIGSEGV, the mapping allows the access");
            if (r == FaultResult.SigBus && !p.Pmap.Poisoned.Contains(vpn))
                Fail($"pid{p.Id} {access} fault at 0x{va:x}: SigBus without a poisoned page");
        }
        Fail($"pid{p.Id} access at 0x{va:x} (write {write}) still faults after 4 resolutions");
        return Outcome.Ok;
    }

    FaultResult Fault(Proc p, ulong va, FaultAccess access)
    {
        ulong vpn = Oracle.Vpn(va);
        bool zfCheck = (checks & Checks.ZeroFill) != 0 && access != FaultAccess.WriteProtect
            && p.O.Pages.TryGetValue(vpn, out var pg) && pg.Kind == PageKind.Anon && pg.Own == null
            && pg.AnonId >= 0 && !oracle.TouchedAnon.Contains(pg.AnonId);
        long zf0 = zfCheck ? ZeroFills(p.Space.Counters) : 0;
        p.Faults++;
        faulting = p;
        faultVa = va & ~(ulong)(PropPmap.Page - 1);
        FaultResult r;
        try { r = p.Space.Fault(va, access); }
        finally { faulting = null; faultVa = ulong.MaxValue; }
        if (r == FaultResult.SigSegv) p.SegvResults++;
        if (r == FaultResult.SigBus) p.BusResults++;
        trace.Add($"      fault {access} 0x{va:x} -> {r}");
        if (zfCheck)
        {
            long d = ZeroFills(p.Space.Counters) - zf0;
            if (d != 1)
                Fail($"pid{p.Id} first {access} fault on a never-touched anonymous page 0x{va:x} counted {d} zero fills " +
                     $"({ZeroFillName(p.Space.Counters)}), want exactly 1");
        }
        return r;
    }

    /// <summary>The access is forbidden: the VM must refuse it too and change nothing.</summary>
    void Probe(Proc p, ulong va, bool write)
    {
        ulong vpn = Oracle.Vpn(va);
        p.Pmap.Ptes.TryGetValue(vpn, out var pte);
        (bool Writable, byte[] Bytes)? before = pte == null ? null : (pte.Writable, (byte[])pte.Bytes.Clone());
        int calls = p.Pmap.Calls;
        var access = pte != null && write ? FaultAccess.WriteProtect : write ? FaultAccess.Write : FaultAccess.Read;
        var r = Fault(p, va, access);
        if (r != FaultResult.SigSegv)
            Fail($"pid{p.Id} probe: a {access} fault at 0x{va:x}, which the mapping forbids, gave {r} (want SigSegv)");
        if (p.Pmap.Calls != calls)
            Fail($"pid{p.Id} probe: the refused {access} fault at 0x{va:x} made {p.Pmap.Calls - calls} pmap calls");
        p.Pmap.Ptes.TryGetValue(vpn, out var after);
        if ((before == null) != (after == null) || before is { } b && (b.Writable != after!.Writable || !b.Bytes.AsSpan().SequenceEqual(after.Bytes)))
            Fail($"pid{p.Id} probe: the refused {access} fault at 0x{va:x} changed the page table");
    }

    /// <summary>
    /// Runs at the start of every pager call. When the fault has dropped the map lock for
    /// the I/O (the only time another thread could change the map), sometimes munmap or
    /// mremap a few pages next to the faulting one in the same space, as a concurrent
    /// thread of the program would. The faulting page stays mapped, so the access's
    /// expected outcome holds; what the fault installs afterwards is checked as usual
    /// (inside the mappings of the space, nothing at an address that moved away).
    /// </summary>
    void Interfere()
    {
        var p = faulting;
        var rng = interference!;
        if (p == null || interfering || faultVa == ulong.MaxValue || Monitor.IsEntered(p.Space.MapLock)) return;
        if (rng.Next(3) == 0) return;
        ulong fvpn = Oracle.Vpn(faultVa);
        int k = rng.Next(1, 5);
        bool after = rng.Next(2) == 0;
        if (!after && fvpn < (ulong)k) return;
        ulong s = after ? fvpn + 1 : fvpn - (ulong)k;
        ulong start = s * PropPmap.Page, len = (ulong)k * PropPmap.Page;
        interfering = true;
        try
        {
            if (rng.Next(2) == 0)
            {
                trace.Add($"      [during I/O] pid{p.Id}.munmap(0x{start:x}, {k}p)");
                p.SwappedOut.RemoveWhere(q => q >= s && q < s + (ulong)k);
                p.Pmap.Zap(start, len);
                p.Space.Unmap(start, len);
                Oracle.Unmap(p.O, s, k);
            }
            else
            {
                ulong to = Layout.Va(rng.Next(Layout.Slots), rng.Next(8));
                ulong t = Oracle.Vpn(to);
                if (!Oracle.AllMapped(p.O, s, k) || (s < t + (ulong)k && t < s + (ulong)k) || (fvpn >= t && fvpn < t + (ulong)k))
                    return;
                trace.Add($"      [during I/O] pid{p.Id}.mremap(0x{start:x}, {k}p -> 0x{to:x})");
                p.SwappedOut.RemoveWhere(q => (q >= s && q < s + (ulong)k) || (q >= t && q < t + (ulong)k));
                p.Pmap.Move(start, to, len);
                p.Space.Remap(start, to, len);
                Oracle.Remap(p.O, s, t, k);
            }
            Interferences++;
        }
        finally { interfering = false; }
    }

    // ---- pmap call checks (prefault safety) ----

    public void CheckInstall(Proc owner, ulong va, bool shared, bool writable, IVnode? vnode, long pindex)
    {
        string what = $"install at 0x{va:x} in pid{owner.Id} ({(shared ? "shared" : "private")}, {(writable ? "writable" : "read-only")})";
        if (faulting != owner)
            Fail($"{what} while {(faulting == null ? "no fault is in progress" : $"pid{faulting.Id} is faulting")}");
        ulong vpn = Oracle.Vpn(va);
        if (!owner.O.Pages.TryGetValue(vpn, out var pg))
            Fail($"{what}: outside every mapping of the space");
        else
        {
            if (pg.Prot == Prot.None) Fail($"{what}: the mapping is PROT_NONE");
            if (writable && (pg.Prot & Prot.Write) == 0) Fail($"{what}: the mapping is {pg.Prot}");
            if (shared != (pg.Kind == PageKind.SharedFile))
                Fail($"{what}: the oracle says the page is {pg.Kind}");
            if (pg.Kind != PageKind.Anon && pg.Own == null)
            {
                if (pg.Pindex >= oracle.Files[pg.File].Pages)
                    Fail($"{what}: f{pg.File} page {pg.Pindex} is past EOF ({oracle.Files[pg.File].Pages} pages)");
                if (w.Error != null && w.Error.File == pg.File && w.Error.Pindex == pg.Pindex)
                    Fail($"{what}: f{pg.File} page {pg.Pindex} cannot be read (injected EIO), yet bytes were installed");
            }
            if (shared && (vnode == null || !fileOfIno.TryGetValue(vnode.Ino, out int f) || f != pg.File || pindex != pg.Pindex))
                Fail($"{what}: maps {(vnode == null ? "nothing" : $"ino {vnode.Ino}")} page {pindex}, the oracle says f{pg.File} page {pg.Pindex}");
        }
    }

    public void CheckProtect(Proc owner, ulong va, ulong length, bool writeProtect)
    {
        string what = $"{(writeProtect ? "write-protect" : "unprotect")} 0x{va:x}+{length / PropPmap.Page}p in pid{owner.Id}";
        if (faulting != owner && !(writeProtect && (forkProtecting == owner || evicting == owner)))
            Fail($"{what} outside a fault of that space");
        if (!writeProtect)
            for (ulong q = Oracle.Vpn(va); q < Oracle.Vpn(va + length); q++)
                if (!owner.O.Pages.TryGetValue(q, out var pg) || (pg.Prot & Prot.Write) == 0)
                    Fail($"{what}: page 0x{q * PropPmap.Page:x} is not mapped writable");
    }

    public void CheckRemove(Proc owner, ulong va)
    {
        if (evicting != owner) Fail($"remove 0x{va:x} in pid{owner.Id} outside an eviction of that space");
    }

    public void CheckPoison(Proc owner, ulong va)
    {
        if (faulting != owner) Fail($"poison 0x{va:x} in pid{owner.Id} outside a fault of that space");
    }

    // ---- invariants after each operation ----

    void AfterOp()
    {
        if ((checks & Checks.Cache) != 0) CheckCache();
        if ((checks & Checks.NoWritableSharing) != 0) CheckNoWritableSharing();
        if ((checks & Checks.Structure) != 0 && !IsUvm(Design)) CheckStructure();
        if ((checks & Checks.Counters) != 0) foreach (var p in live) CheckCounters(p, final: false);
        if ((checks & Checks.Agreement) != 0) CheckAgreement();
        if ((checks & Checks.Wiring) != 0) CheckWiring();
        if ((checks & (Checks.DirtyClean | Checks.SlotPolicy)) != 0)
            // A private page installed writable may be written without a fault: no longer known clean.
            foreach (var p in live)
                foreach (var (vpn, st) in p.St.ToList())
                    if (st != PageState.Dirty && p.Pmap.Ptes.TryGetValue(vpn, out var pte) && pte.Writable && !pte.Shared)
                        p.St.Remove(vpn);
        if ((checks & Checks.SlotPolicy) != 0)
            foreach (var p in live)
            {
                var c = p.Space.Counters;
                if (Design != "freebsd" && c.swap_slots_freed_on_dirty != 0)
                    Fail($"pid{p.Id}: swap_slots_freed_on_dirty = {c.swap_slots_freed_on_dirty} ({Design} never frees a slot on a write)");
                if (!IsUvm(Design) && c.swap_slots_freed_on_wire != 0)
                    Fail($"pid{p.Id}: swap_slots_freed_on_wire = {c.swap_slots_freed_on_wire} ({Design} does not free slots on wiring)");
            }
    }

    void CheckAgreement()
    {
        foreach (var p in live)
        {
            foreach (var vpn in p.O.Pages.Keys)
            {
                ulong va = vpn * PropPmap.Page;
                bool model = p.Space.IsInstalled(va), real = p.Pmap.Ptes.ContainsKey(vpn);
                if (model != real)
                    Fail($"pid{p.Id} 0x{va:x}: the model believes the page is {(model ? "" : "not ")}installed, the page table {(real ? "has" : "lacks")} it");
            }
            foreach (var vpn in p.Pmap.Ptes.Keys)
                if (!p.O.Pages.ContainsKey(vpn)) Fail($"pid{p.Id} 0x{vpn * PropPmap.Page:x}: a page is present outside every mapping");
        }
    }

    void CheckCache()
    {
        var cachePages = new HashSet<byte[]>(ReferenceEqualityComparer.Instance);
        for (int f = 0; f < vnodes.Length; f++)
        {
            var v = vnodes[f];
            var file = oracle.Files[f];
            for (int q = 0; q < file.Pages; q++)
            {
                if (!v.IsResident(q)) continue;
                var page = v.CachePage(q);
                cachePages.Add(page);
                int i = page.AsSpan().CommonPrefixLength(file.Current(q));
                if (i != PropPmap.Page)
                    Fail($"page cache of f{f} page {q} differs from the file's bytes at byte {i}: 0x{page[i]:x2}, " +
                         $"want 0x{file.Current(q)[i]:x2} (a private write went through, or a shared write was lost)");
            }
            int d = v.Data.AsSpan().CommonPrefixLength(file.Flushed);
            if (d != file.Size)
                Fail($"backing file f{f} differs at byte {d}: 0x{v.Data[d]:x2}, want 0x{file.Flushed[d]:x2}");
        }
        foreach (var p in live)
            foreach (var (vpn, pte) in p.Pmap.Ptes)
            {
                p.O.Pages.TryGetValue(vpn, out var pg);
                if (pte.Shared)
                {
                    if (pg == null || pg.Kind != PageKind.SharedFile)
                        Fail($"pid{p.Id} 0x{vpn * PropPmap.Page:x}: a page-cache page is mapped where the oracle has {pg?.Kind.ToString() ?? "nothing"}");
                    else if (!vnodes[pg.File].IsResident(pg.Pindex) || !ReferenceEquals(pte.Bytes, vnodes[pg.File].CachePage(pg.Pindex)))
                        Fail($"pid{p.Id} 0x{vpn * PropPmap.Page:x}: the shared pte is not f{pg.File} page {pg.Pindex}'s cache page");
                }
                else if (cachePages.Contains(pte.Bytes))
                    Fail($"pid{p.Id} 0x{vpn * PropPmap.Page:x}: a private pte maps a page-cache page (writes would go through)");
            }
    }

    void CheckNoWritableSharing()
    {
        foreach (var p in live)
            foreach (var (vpn, pte) in p.Pmap.Ptes)
                if (pte.Writable && (!p.O.Pages.TryGetValue(vpn, out var pg) || (pg.Prot & Prot.Write) == 0))
                    Fail($"pid{p.Id} 0x{vpn * PropPmap.Page:x}: installed writable, the mapping is not writable");
        if (IsUvm(Design))
        {
            // A private page installed writable must be an anon that only this amap slot holds.
            foreach (var p in live)
                foreach (var (vpn, pte) in p.Pmap.Ptes)
                    if (pte.Writable && !pte.Shared && p.Space.AnonRefAt(vpn * PropPmap.Page) is var refs && refs != 1)
                        Fail($"pid{p.Id} 0x{vpn * PropPmap.Page:x}: a private page installed writable whose anon has an_ref {refs} (want 1)");
            return;
        }
        // Which spaces have each model page (first object, pindex) installed, and how.
        var holders = new Dictionary<(VmObject, long), List<(Proc, ulong, bool)>>();
        foreach (var p in live)
            foreach (var (vpn, pte) in p.Pmap.Ptes)
            {
                if (pte.Shared) continue;
                ulong va = vpn * PropPmap.Page;
                if (p.Space.ObjectAt(va) is not { } at) continue;
                if (pte.Writable && at.Object.Kind != VmObjectKind.Anonymous)
                    Fail($"pid{p.Id} 0x{va:x}: a private page installed writable while the map's first object is {at.Object} (copy-on-write not done)");
                if (!holders.TryGetValue(at, out var list)) holders[at] = list = new();
                list.Add((p, va, pte.Writable));
            }
        foreach (var (key, list) in holders)
            if (list.Count > 1 && list.Any(h => h.Item3))
                Fail($"{key.Item1} page {key.Item2} is installed writable in one space and present in another: " +
                     string.Join(", ", list.Select(h => $"pid{h.Item1.Id} 0x{h.Item2:x} {(h.Item3 ? "writable" : "read-only")}")));
    }

    void CheckStructure()
    {
        var entries = new Dictionary<VmObject, int>(ReferenceEqualityComparer.Instance);
        foreach (var p in live)
            foreach (var line in p.Space.DescribeMaps().Split('\n', StringSplitOptions.RemoveEmptyEntries))
            {
                ulong start = Convert.ToUInt64(line[..line.IndexOf('-')], 16);
                var o = p.Space.ObjectAt(start)!.Value.Object;
                entries[o] = entries.GetValueOrDefault(o) + 1;
            }
        var reachable = new HashSet<VmObject>(ReferenceEqualityComparer.Instance);
        var shadows = new Dictionary<VmObject, int>(ReferenceEqualityComparer.Instance);
        foreach (var o0 in entries.Keys)
            for (var o = o0; o != null && reachable.Add(o); o = o.BackingObject)
                if (o.BackingObject is { } b) shadows[b] = shadows.GetValueOrDefault(b) + 1;
        foreach (var o in reachable)
        {
            if (o.IsDead) Fail($"{o} is dead but still reachable from a live map");
            int e = entries.GetValueOrDefault(o), s = shadows.GetValueOrDefault(o);
            if (o.RefCount != e + s)
                Fail($"{o}: ref_count {o.RefCount}, but {e} entries and {s} shadows point at it");
            if (o.ShadowCount != s) Fail($"{o}: shadow_count {o.ShadowCount}, but {s} objects shadow it");
        }
        if (vm.ObjectsAlive != reachable.Count)
            Fail($"Vm.ObjectsAlive = {vm.ObjectsAlive}, but {reachable.Count} objects are reachable from live maps");
    }

    /// <summary>The zero-fill counter: FreeBSD lineage v_zfod, UVM flt_przero (when the counters have it).</summary>
    string ZeroFillName(VmCounters c) =>
        IsUvm(Design) && c.Snapshot().Any(kv => kv.Key == "flt_przero") ? "flt_przero" : "v_zfod";

    long ZeroFills(VmCounters c) => c[ZeroFillName(c)];

    void CheckCounters(Proc p, bool final)
    {
        var c = p.Space.Counters.Snapshot().ToDictionary(kv => kv.Key, kv => kv.Value);
        long Get(string n) => c.GetValueOrDefault(n);
        string who = $"pid{p.Id} counters{(final ? " at exit" : "")}";
        void Le(string a, string b)
        {
            if (c.ContainsKey(a) && c.ContainsKey(b) && Get(a) > Get(b)) Fail($"{who}: {a} = {Get(a)} > {b} = {Get(b)}");
        }
        if (Get("v_vm_faults") != p.Faults) Fail($"{who}: v_vm_faults = {Get("v_vm_faults")}, the MMU raised {p.Faults} faults");
        if (c.ContainsKey("sigsegv") && Get("sigsegv") != p.SegvResults)
            Fail($"{who}: sigsegv = {Get("sigsegv")}, but {p.SegvResults} faults ended in SigSegv");
        if (c.ContainsKey("sigbus") && Get("sigbus") != p.BusResults)
            Fail($"{who}: sigbus = {Get("sigbus")}, but {p.BusResults} faults ended in SigBus");
        if (Get("internal_errors") != 0) Fail($"{who}: internal_errors = {Get("internal_errors")}");
        Le("v_cow_optim", "v_cow_faults");
        Le("v_ozfod", "v_zfod");
        Le("pages_prefaulted", "pages_installed");
        Le("fastpath_hits", "v_vm_faults");
        Le("v_io_faults", "v_vm_faults");
        Le("pageins", "v_vm_faults");
        Le("pager_errors", "sigbus");
        Le("eof_faults", "sigbus");
        // The BSD designs count swap-ins as I/O faults too (pageins); they read no file pages.
        long vnodeIo = Get("v_io_faults") - (IsUvm(Design) ? 0 : Get("pageins"));
        if (c.ContainsKey("read_ahead_pages") && Get("read_ahead_pages") + Get("read_behind_pages") + vnodeIo > Get("pager_pages"))
            Fail($"{who}: read_ahead_pages + read_behind_pages + (v_io_faults - pageins) > pager_pages");
        string[] uvm = ["flt_anon", "flt_acow", "flt_obj", "flt_prcopy", "flt_przero"];
        if (uvm.Any(c.ContainsKey))
        {
            long sum = uvm.Sum(Get);
            long faults = c.ContainsKey("faults") ? Get("faults") : Get("v_vm_faults");
            if (sum > faults) Fail($"{who}: flt_anon+flt_acow+flt_obj+flt_prcopy+flt_przero = {sum} > faults = {faults}");
        }
        foreach (var (k, v) in c)
            if (v < 0) Fail($"{who}: {k} = {v} is negative");
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
