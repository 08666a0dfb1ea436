using FsCheck;
using FsCheck.Fluent;
using Lab.Tests.Vm;
using Lab.Vm;
using Xunit;
using VmCore = Lab.Vm.Vm;

namespace Lab.Props;

/// <summary>One thread of a concurrent-fault scenario: its own space maps the file from page <see cref="From"/> and faults on the target page.</summary>
public sealed record FaultThread(int From, bool Shared, bool Write)
{
    public override string ToString() => $"space maps f0@{From} {(Shared ? "SHARED" : "PRIVATE")}, {(Write ? "write" : "read")} fault on the target";
}

/// <summary>N spaces mapping one file, each with one thread faulting on the same file page at once.</summary>
public sealed record ConcurrentFaults(int FilePages, int Target, int DelayMs, FaultThread[] Threads)
{
    public override string ToString() =>
        $"\n  file: {FilePages}p, target page {Target}, pager delay {DelayMs} ms\n  threads ({Threads.Length}):" +
        string.Concat(Threads.Select((t, i) => $"\n    {i}: {t}")) + "\n";
}

/// <summary>
/// §4.11: at most one page per (object, pindex), and at most one pager read in flight for
/// it: N threads on N spaces faulting the same file page at the same moment cause exactly
/// one fault that goes to the pager (v_io_faults summed over the spaces; the others wait
/// for the busy page, v_intrans; UVM: a fltget with no read of its own) and one file read covering the page
/// (MemVnode.Loads; the pager sleeps
/// <see cref="ConcurrentFaults.DelayMs"/> inside it, so the faults really overlap), every
/// shared mapping maps the one page-cache page, and every private one a copy of its bytes.
/// Real threads: one per space, released together by a barrier.
/// </summary>
public sealed class Concurrency
{
    const int P = Layout.PageSize;
    const ulong A = Layout.Base;

    static Gen<ConcurrentFaults> Scenario =>
        from pages in Gen.Choose(2, 12)
        from target in Gen.Choose(0, pages - 1)
        from delay in Gen.Choose(1, 2)
        from n in Gen.Choose(2, 6)
        from threads in Gen.ArrayOf(
            from back in Gen.Choose(0, target)
            from shared in Gen.Elements(true, false)
            from write in Gen.Elements(true, false, false)
            select new FaultThread(target - back, shared, write), n)
        select new ConcurrentFaults(pages, target, delay, threads);

    static IEnumerable<ConcurrentFaults> Shrink(ConcurrentFaults c)
    {
        for (int i = 0; i < c.Threads.Length && c.Threads.Length > 2; i++)
            yield return c with { Threads = [.. c.Threads.Take(i), .. c.Threads.Skip(i + 1)] };
        for (int i = 0; i < c.Threads.Length; i++)
        {
            var t = c.Threads[i];
            if (t.Write) yield return c with { Threads = [.. c.Threads.Select((x, j) => j == i ? x with { Write = false } : x)] };
            if (t.From != c.Target) yield return c with { Threads = [.. c.Threads.Select((x, j) => j == i ? x with { From = c.Target } : x)] };
        }
        if (c.DelayMs > 1) yield return c with { DelayMs = 1 };
    }

    /// <summary>A page table for one space and one thread; installs are recorded with their bytes.</summary>
    sealed class ThreadPmap : IPmap
    {
        public readonly Dictionary<ulong, (byte[] Bytes, bool Shared, bool Writable)> Ptes = new();
        readonly byte[] staging = new byte[P * 64];
        public int PageSize => P;
        public Span<byte> Staging(int pages) => staging.AsSpan(0, pages * P);
        public bool EnterCopy(ulong va, int pages, bool writable)
        {
            lock (Ptes)
            {
                for (int i = 0; i < pages; i++) if (Ptes.ContainsKey(va + (ulong)(i * P))) return false;
                for (int i = 0; i < pages; i++) Ptes[va + (ulong)(i * P)] = (staging.AsSpan(i * P, P).ToArray(), false, writable);
                return true;
            }
        }
        public bool EnterZero(ulong va, bool writable) { lock (Ptes) return Ptes.TryAdd(va, (new byte[P], false, writable)); }
        public bool EnterShared(ulong va, IVnode vnode, long pindex, bool writable)
        {
            lock (Ptes) return Ptes.TryAdd(va, (((MemVnode)vnode).CachePage(pindex), true, writable));
        }
        public void Protect(ulong va, ulong length, bool writeProtect) { }
        public void Poison(ulong va) { }
        public void Wake(ulong va, ulong length) { }
        public bool ReadPage(ulong va, Span<byte> dest) => false;
        public void Remove(ulong va, int pages) { }
    }

    static long waits;

    static void Run(ConcurrentFaults c, string design)
    {
        var vm = new VmCore();
        var v = new MemVnode((long)c.FilePages * P) { LoadDelayMs = c.DelayMs };
        var original = (byte[])v.Data.Clone();
        int calls = 0;      // LoadPages calls whose range covers the target (reported on failure)
        int inFlight = 0;   // ... of which started before the file read of it completed
        v.OnLoad = (pindex, count) =>
        {
            if (pindex > c.Target || c.Target >= pindex + count) return;
            Interlocked.Increment(ref calls);
            if (Interlocked.Read(ref v.PagesLoaded) == 0) Interlocked.Increment(ref inFlight);
        };
        var spaces = new AddressSpace[c.Threads.Length];
        var pmaps = new ThreadPmap[c.Threads.Length];
        for (int i = 0; i < spaces.Length; i++)
        {
            var t = c.Threads[i];
            pmaps[i] = new ThreadPmap();
            spaces[i] = vm.CreateSpace(pmaps[i], Resolvers.Create(design));
            spaces[i].MapFile(A, (ulong)(c.FilePages - t.From) * P, Prot.Read | Prot.Write, v, (long)t.From * P, t.Shared);
        }
        var results = new FaultResult[spaces.Length];
        var errors = new Exception?[spaces.Length];
        using var barrier = new Barrier(spaces.Length);
        var threads = Enumerable.Range(0, spaces.Length).Select(i => new Thread(() =>
        {
            try
            {
                barrier.SignalAndWait();
                var t = c.Threads[i];
                results[i] = spaces[i].Fault(A + (ulong)(c.Target - t.From) * P, t.Write ? FaultAccess.Write : FaultAccess.Read);
            }
            catch (Exception e) { errors[i] = e; }
        })).ToArray();
        foreach (var t in threads) t.Start();
        foreach (var t in threads) t.Join();
        try
        {
            for (int i = 0; i < spaces.Length; i++)
            {
                if (errors[i] != null) throw new PropertyFailure($"[{design}] thread {i} threw {errors[i]}");
                if (results[i] != FaultResult.Resolved && results[i] != FaultResult.Superseded)
                    throw new PropertyFailure($"[{design}] thread {i}: fault gave {results[i]}");
            }
            // At most one pager read of the page in flight: the other faults wait for the busy page.
            if (inFlight > 1)
                throw new PropertyFailure($"[{design}] {inFlight} pager calls for page {c.Target} started before its read completed (want 1); " +
                    $"{calls} LoadPages and {v.ReadCalls} ReadPages calls in all");
            // One fault does the I/O (v_io_faults). UVM's lower I/O path may pass the pager a
            // second time once the page is valid (no I/O): counted there, not an error (see README).
            long io = spaces.Sum(s => s.Counters.v_io_faults);
            if (Runner.IsUvm(design) ? io < 1 : io != 1)
                throw new PropertyFailure($"[{design}] v_io_faults summed over the spaces = {io} (want 1: one fault reads page {c.Target}, " +
                    $"the others wait for it); {calls} LoadPages and {v.ReadCalls} ReadPages calls, pager I/O: " +
                    string.Join(", ", v.Loads.Select(l => $"[{l.Pindex}, +{l.Count})")));
            // Mach: v_intrans. UVM waits inside the blocking get and counts no wait of its own
            // (fltpgwait is for anons; every blocking get is a fltget, 001: 1377, 003: 1925): a get
            // that made no pager read of its own met the page another fault was reading.
            Interlocked.Add(ref waits, spaces.Sum(s => s.Counters.v_intrans + s.Counters.fltget - s.Counters.v_io_faults));
            var reads = v.Loads.Where(l => l.Pindex <= c.Target && c.Target < l.Pindex + l.Count).ToList();
            if (reads.Count != 1)
                throw new PropertyFailure($"[{design}] {reads.Count} pager reads covered page {c.Target} (want exactly 1); " +
                    $"pager I/O: {string.Join(", ", v.Loads.Select(l => $"[{l.Pindex}, +{l.Count})"))}");
            var cachePage = v.CachePage(c.Target);
            var want = original.AsSpan(c.Target * P, P);
            for (int i = 0; i < spaces.Length; i++)
            {
                var t = c.Threads[i];
                ulong va = A + (ulong)(c.Target - t.From) * P;
                if (!pmaps[i].Ptes.TryGetValue(va, out var pte))
                    throw new PropertyFailure($"[{design}] thread {i}: the target page is not installed after {results[i]}");
                if (t.Shared && !ReferenceEquals(pte.Bytes, cachePage))
                    throw new PropertyFailure($"[{design}] thread {i}: its shared mapping does not map the one page-cache page of page {c.Target}");
                if (!t.Shared && !pte.Bytes.AsSpan().SequenceEqual(want))
                    throw new PropertyFailure($"[{design}] thread {i}: its private copy differs from the file's page {c.Target}");
            }
            if (!cachePage.AsSpan().SequenceEqual(want)) throw new PropertyFailure($"[{design}] the page cache's page {c.Target} changed");
        }
        finally
        {
            foreach (var s in spaces) s.Destroy();
        }
        if (vm.ObjectsAlive != 0) throw new PropertyFailure($"[{design}] after every space was destroyed, Vm.ObjectsAlive = {vm.ObjectsAlive}");
    }

    /// <summary>§4.11: N concurrent faults on one file page: one page, exactly one pager read.</summary>
    [Theory, MemberData(nameof(Properties.Designs), MemberType = typeof(Properties))]
    public void OnePagePerObjectPindex(string design)
    {
        var config = Config.QuickThrowOnFailure.WithMaxTest(Properties.Cases).WithQuietOnSuccess(true)
            .WithName($"{nameof(OnePagePerObjectPindex)}[{design}]");
        if (Environment.GetEnvironmentVariable("LAB_PROPS_REPLAY") is { Length: > 0 } replay)
        {
            var parts = replay.Split(',', StringSplitOptions.TrimEntries);
            config = config.WithReplay(new Replay(new Rnd(ulong.Parse(parts[0]), ulong.Parse(parts[1])), null));
        }
        Interlocked.Exchange(ref waits, 0);
        FsCheck.Check.One(config, Prop.ForAll(Arb.From(Scenario, Shrink), (ConcurrentFaults c) => Run(c, design)));
        // Not vacuous: some faults really found the page busy (in the pager) and waited.
        if (Properties.Cases >= 100) Assert.True(Interlocked.Read(ref waits) > 0, "no fault ever waited for the busy page: the faults never overlapped");
    }
}
