using System.Diagnostics;
using System.Runtime.InteropServices;
using Lab.Linux;
using Lab.Vm;

namespace Lab.Daemon;

/// <summary>
/// One process image under `lab run`: its address space in the VM core, its pmap (the
/// uffd), and the thread that reads that uffd. Faults of one process are served by its
/// own thread, so no lock is shared between processes on the fault path.
/// </summary>
public sealed unsafe class LabProcess : IUffdEvents
{
    public int Pid;
    public readonly ulong RunId;
    public readonly string Comm;
    public readonly AddressSpace Space;
    public readonly UffdPmap Pmap;
    public readonly LatencyHistogram Latency = new();
    public long LookupMisses, Events, Resyncs;
    /// <summary>The last exit report of this image's shim (LAB_OUTSIDE); default until one comes.</summary>
    public OutsidePages Outside;
    /// <summary>Ranges (and their pages) the program registered with a userfaultfd of its own.</summary>
    public long ReleasedRanges, ReleasedPages;
    int _releaseLogged;
    /// <summary>The shim's agent (pageout's MADV_DONTNEED in the process); null until it connects.</summary>
    public EvictAgent? Agent
    {
        get => _agent;
        // The pmap first: the pageout picks a process by this getter, then has its pmap send.
        set { Pmap.Agent = value; _agent = value; }
    }
    volatile EvictAgent? _agent;
    /// <summary>The run's resident limit, and the pageout to wake when this process passes it.</summary>
    public RunLimit? Limit, MountLimit;
    public PageoutDaemon? Pageout;
    public long ThrottledFaults;
    ulong _lastSuperseded = ulong.MaxValue;   // fault thread only
    int _supersededRun;
    // Children from UFFD_EVENT_FORK, in the order their events were read, until their
    // CHILD_HELLO claims them. Which child is whose is known only from the parent's
    // LAB_FORK_DONE (the event carries no pid): see ForkDone.
    readonly List<LabProcess> _children = new();
    /// <summary>A fork child: the pid its parent's fork returned; 0 until the parent's LAB_FORK_DONE.</summary>
    public int ForkPid;
    readonly Registry _registry;
    /// <summary>The thread that reads this process's uffd; its lock is held while what it read is applied.</summary>
    public readonly UffdReader Reader;
    int _gone;

    readonly ManualResetEventSlim _torndown = new();

    /// <summary>True once: the caller tears the process down, then calls <see cref="TornDown"/>.</summary>
    public bool MarkGone() => Interlocked.Exchange(ref _gone, 1) == 0;

    public void TornDown() => _torndown.Set();

    /// <summary>Another thread is tearing it down: wait for that to finish (bounded).</summary>
    public void WaitTornDown() => _torndown.Wait(TimeSpan.FromSeconds(30));

    public LabProcess(Registry registry, int pid, ulong runId, string comm, AddressSpace space, UffdPmap pmap)
    {
        _registry = registry; Pid = pid; RunId = runId; Comm = comm; Space = space; Pmap = pmap;
        Reader = new UffdReader(pmap, this, comm);
    }

    int IUffdEvents.Pid => Pid;

    public void Start() => Reader.Start();

    /// <summary>Stop the fault thread and wait for it; the caller then destroys the space.</summary>
    public void Stop() => Reader.Stop();

    bool IUffdEvents.TakeOwnRemove(ulong start, ulong end)
    {
        if (Agent?.Covers(start, end) != true) return false;
        Interlocked.Increment(ref Events);
        return true;
    }

    void IUffdEvents.Handle(ref Native.UffdMsg m)
    {
        try
        {
            // An event applies after the faults read before it: held-back ones go first
            // (not for our agent's own REMOVE, which changes nothing in the model).
            bool ours = m.Event == Native.UFFD_EVENT_REMOVE && Agent?.Covers(m.Arg0, m.Arg1) == true;
            if (m.Event != Native.UFFD_EVENT_PAGEFAULT && !ours) ResolveDeferred(force: true);
            switch (m.Event)
            {
                case Native.UFFD_EVENT_PAGEFAULT: Fault(m.Arg0, m.Arg1); break;
                case Native.UFFD_EVENT_FORK: Forked((int)(uint)m.Arg0); break;
                case Native.UFFD_EVENT_REMAP:
                {
                    Interlocked.Increment(ref Events);
                    // MREMAP_DONTUNMAP (announced before the call): the old range stays, empty.
                    bool keep = _dontUnmapLen != 0 && m.Arg0 == _dontUnmapAddr && m.Arg2 <= _dontUnmapLen;
                    if (keep) _dontUnmapLen = 0;
                    Space.Remap(m.Arg0, m.Arg1, m.Arg2, keep);
                    break;
                }
                case Native.UFFD_EVENT_REMOVE:
                    Interlocked.Increment(ref Events);
                    // Our agent's own madvise is the eviction under way (completed when it replies);
                    // anything else is the program discarding memory.
                    if (!ours) Space.Remove(m.Arg0, m.Arg1 - m.Arg0);
                    break;
                case Native.UFFD_EVENT_UNMAP:
                    Interlocked.Increment(ref Events);
                    MarkShared(m.Arg0, m.Arg1 - m.Arg0);   // written back by the shim's LAB_UNMAP, or at exit
                    Space.Unmap(m.Arg0, m.Arg1 - m.Arg0);
                    break;
            }
        }
        catch (Exception e)
        {
            // An event the model could not apply: logged and counted; the daemon goes on.
            // (Faults catch their own errors in FaultNow.)
            Interlocked.Increment(ref Space.Counters.internal_errors);
            Log.Error($"pid {Pid} ({Comm}): internal error on uffd event {m.Event:x}: {e.GetType().Name}: {e.Message}");
        }
    }

    // Faults held back while the process's pool is far over its resident limit: their
    // threads stay blocked (as in direct reclaim) until the pageout catches up, or at most
    // ThrottleMaxMs. The reader goes on reading meanwhile: the agent's events need it.
    const int DeferCapacity = 64;
    const long ThrottleMaxMs = 20;
    readonly ulong[] _deferFlags = new ulong[DeferCapacity], _deferAddr = new ulong[DeferCapacity];
    int _deferCount;
    long _deferSince;

    /// <summary>This process's resident pages when the pageout last added up its pools.</summary>
    public int RunBase, MountBase;

    /// <summary>
    /// The pool is far over its limit: its total at the pageout's last count, plus what this
    /// process faulted in since (others' growth shows at the next count, within a batch).
    /// </summary>
    bool Throttled => Agent is { Dead: false } && (Over(Limit, RunBase) || Over(MountLimit, MountBase));

    bool Over(RunLimit? l, int baseline) =>
        l is { Pages: > 0, Stuck: false } && Volatile.Read(ref l.LastTotal) + (Space.ResidentPages - baseline) > l.Effective + l.Slack;

    /// <summary>Resolve the held-back faults if the pool is back under its limit or they waited long enough.</summary>
    void ResolveDeferred(bool force)
    {
        if (_deferCount == 0) return;
        if (!force && Throttled && Stopwatch.GetElapsedTime(_deferSince).TotalMilliseconds < ThrottleMaxMs) return;
        int n = _deferCount;
        _deferCount = 0;
        for (int i = 0; i < n; i++) FaultNow(_deferFlags[i], _deferAddr[i]);
    }

    bool IUffdEvents.Deferring => _deferCount > 0;

    void IUffdEvents.ResolveDeferred() => ResolveDeferred(force: false);

    void Fault(ulong flags, ulong address)
    {
        // Only faults that bring a page in wait; a write-protect fault adds no page.
        if ((flags & Native.UFFD_PAGEFAULT_FLAG_WP) == 0 && _deferCount < DeferCapacity && Throttled)
        {
            if (_deferCount == 0) _deferSince = Stopwatch.GetTimestamp();
            _deferFlags[_deferCount] = flags;
            _deferAddr[_deferCount++] = address;
            Interlocked.Increment(ref ThrottledFaults);
            Pageout?.Kick();
            return;
        }
        FaultNow(flags, address);
    }

    void FaultNow(ulong flags, ulong address)
    {
        try { Resolve(flags, address); }
        catch (Exception e)
        {
            // Never let one bad fault take the daemon down; never leave the thread blocked
            // either: the page gets SIGBUS, which is loud, rather than silent zeros.
            Interlocked.Increment(ref Space.Counters.internal_errors);
            Log.Error($"pid {Pid} ({Comm}): internal error on a fault at {address:x}: {e.GetType().Name}: {e.Message}");
            Pmap.Poison(address & ~0xfffUL);
        }
    }

    void Resolve(ulong flags, ulong address)
    {
        long t0 = Stopwatch.GetTimestamp();
        ulong va = address & ~0xfffUL;
        var access = (flags & Native.UFFD_PAGEFAULT_FLAG_WP) != 0 ? FaultAccess.WriteProtect
            : (flags & Native.UFFD_PAGEFAULT_FLAG_WRITE) != 0 ? FaultAccess.Write : FaultAccess.Read;
        var c = Space.Counters;
        long pagerErrors = Volatile.Read(ref c.pager_errors), internalErrors = Volatile.Read(ref c.internal_errors);
        var result = Space.Fault(va, access);
        if (result == FaultResult.SigSegv)
        {
            // The kernel let the access through, so the model is missing the range: say so loudly.
            Interlocked.Increment(ref LookupMisses);
            Log.Error($"pid {Pid} ({Comm}): lookup miss: no map entry for a {access} fault at {va:x}; the page gets SIGBUS");
            Pmap.Poison(va);
        }
        else if (result == FaultResult.SigBus && (Volatile.Read(ref c.pager_errors) != pagerErrors || Volatile.Read(ref c.internal_errors) != internalErrors))
        {
            // A SIGBUS the program did not ask for (not an access past the end of a file).
            string why = Volatile.Read(ref c.pager_errors) != pagerErrors ? "pager error" : "internal error";
            Log.Error($"pid {Pid} ({Comm}, vm {Space.Resolver.Name}): {why} on a {access} fault at {va:x}; the page gets SIGBUS");
        }
        else if (result == FaultResult.Superseded)
        {
            // A duplicate fault (another thread's, already served) is answered by a wake. The
            // same missing page again and again means the model is wrong about it: re-resolve.
            if (access != FaultAccess.WriteProtect && va == _lastSuperseded && ++_supersededRun >= 3)
            {
                _supersededRun = 0;
                Interlocked.Increment(ref Resyncs);
                Space.ForgetInstalled(va);
                result = Space.Fault(va, access);
            }
            else if (va != _lastSuperseded) { _lastSuperseded = va; _supersededRun = 1; }
            if (result == FaultResult.Superseded) Pmap.Wake(va, 4096);
        }
        else
        {
            _lastSuperseded = ulong.MaxValue;
            // Retry: the page is being evicted. The thread stays blocked; the agent's reply
            // completes the eviction and wakes it, and its access then faults the page back in.
            if (result == FaultResult.Retry && Agent == null) Pmap.Wake(va, 4096);
            else if (result == FaultResult.Resolved && Pageout != null)
            {
                // Wake the pageout when over our run's limit, and every 64 pages under a
                // mount-wide one (whose total only the pageout adds up).
                int resident = Space.ResidentPages;
                if ((Limit is { Pages: > 0 } l && resident > l.Effective) || (MountLimit is { Pages: > 0 } && (resident & 63) == 0))
                    Pageout.Kick();
            }
        }
        Latency.Record(Stopwatch.GetTimestamp() - t0);
    }

    void Forked(int childUffd)
    {
        Interlocked.Increment(ref Events);
        var pmap = new UffdPmap(new Fd(childUffd));
        var child = new LabProcess(_registry, 0, RunId, Comm, Space.Fork(pmap), pmap) { Limit = Limit, MountLimit = MountLimit, Pageout = Pageout };
        _registry.Add(child);
        child.Start();
        lock (_children) _children.Add(child);
    }

    readonly List<IVnode> _pendingFlush = new();

    /// <summary>
    /// Pages of writable shared mappings in the range may have been written by the program
    /// (no dirty bit reaches us): mark them dirty and remember their files for the next flush.
    /// </summary>
    /// Returns how many pages were marked.
    public long MarkShared(ulong addr, ulong len)
    {
        long pages = 0;
        foreach (var (vnode, first, count) in Space.SharedRanges(addr, len))
        {
            vnode.MarkDirty(first, count);
            pages += count;
            lock (_pendingFlush) if (!_pendingFlush.Contains(vnode)) _pendingFlush.Add(vnode);
        }
        return pages;
    }

    /// <summary>Write back the files marked by MarkShared. Returns 0 or the first errno.</summary>
    public int FlushPending()
    {
        IVnode[] files;
        lock (_pendingFlush) { files = _pendingFlush.ToArray(); _pendingFlush.Clear(); }
        int rc = 0;
        foreach (var v in files) { int e = v.Flush(); if (e != 0 && rc == 0) rc = e; }
        return rc;
    }

    /// <summary>
    /// The pageout's scan of this process, with the reader kept out: no uffd message is read
    /// meanwhile, so every page the model has installed is really there (a REMOVE read but
    /// not yet applied would leave the model a page the kernel zapped, and reading that page's
    /// bytes would then fault into our own uffd and wait for the reader, which waits for us).
    /// </summary>
    public int ScanForPageout(int want, Span<ulong> begun, Span<ulong> saved, out bool swapFull)
    {
        lock (Reader.Handling) return Space.PageoutScan(want, begun, saved, out swapFull);
    }

    /// <summary>
    /// The program registers [addr, addr+len) with a userfaultfd of its own: the range leaves
    /// the lab. With the reader kept out (every event read is applied, no fault is half
    /// resolved), pages the lab paged out come back first, since a program never sees swap;
    /// then the map forgets the range and it leaves our uffd. Pages in the process stay, so
    /// the program's uffd sees only pages that were never there (as for memory it had
    /// touched before registering). Faults held back in the range are dropped: the
    /// unregister wakes their threads, which retry under the program's uffd.
    /// Returns 0 or errno.
    /// </summary>
    public int Release(ulong addr, ulong len)
    {
        int err;
        lock (Reader.Handling)
        {
            // We are the reader meanwhile: an install that meets an unread event reads it aside.
            int reader = Pmap.ReaderThreadId;
            Pmap.ReaderThreadId = Environment.CurrentManagedThreadId;
            try { err = ReleaseLocked(addr, len); }
            finally { Pmap.ReaderThreadId = reader; }
        }
        if (Interlocked.Exchange(ref _releaseLogged, 1) == 0)
            Log.Info($"pid {Pid} ({Comm}) registered lab memory {addr:x}-{addr + len:x} with its own userfaultfd: "
                + "that range leaves the lab (counted in uffd_released_ranges; further ones are not logged)");
        if (err != 0) Log.Error($"pid {Pid}: UFFDIO_UNREGISTER {addr:x}-{addr + len:x}: {Errno.StrError(err)}");
        return err;
    }

    // Caller holds Reader.Handling and stands in for the reader thread.
    int ReleaseLocked(ulong addr, ulong len)
    {
        System.Diagnostics.Debug.Assert(Monitor.IsEntered(Reader.Handling), "caller holds Reader.Handling");
        int kept = 0;
        for (int i = 0; i < _deferCount; i++)
            if (_deferAddr[i] < addr || _deferAddr[i] - addr >= len)
            {
                _deferFlags[kept] = _deferFlags[i];
                _deferAddr[kept++] = _deferAddr[i];
            }
        _deferCount = kept;
        int lost = 0;
        for (ulong va = addr; va - addr < len; va += 4096)
        {
            try
            {
                if (Space.IsPagedOut(va) && (Space.Fault(va, FaultAccess.Read) != FaultResult.Resolved || !Space.IsInstalled(va)))
                    lost++;
            }
            catch (Exception e)
            {
                lost++;
                Log.Error($"pid {Pid}: internal error bringing back {va:x}: {e.GetType().Name}: {e.Message}");
            }
        }
        MarkShared(addr, len);
        Space.Unmap(addr, len);
        int err = Pmap.Unregister(addr, len);
        // Faults in the range read aside meanwhile were woken by the unregister; the rest go on.
        Reader.DropAsideFaults(addr, len);
        Reader.HandleSetAside();
        if (err == 0)
        {
            Interlocked.Increment(ref ReleasedRanges);
            Interlocked.Add(ref ReleasedPages, (long)(len / 4096));
        }
        if (lost > 0)
        {
            Interlocked.Increment(ref Space.Counters.internal_errors);
            Log.Error($"pid {Pid}: {lost} paged-out pages of {addr:x}-{addr + len:x} could not be brought back before it left the lab");
        }
        return err;
    }

    // The range of an mremap(MREMAP_DONTUNMAP) under way (read and written under Reader.Handling).
    ulong _dontUnmapAddr, _dontUnmapLen;

    /// <summary>
    /// LAB_REMAP_PREPARE: the next REMAP event from <paramref name="addr"/> is an
    /// MREMAP_DONTUNMAP, whose old range stays mapped. Length 0 ends the expectation.
    /// </summary>
    public void ExpectDontUnmap(ulong addr, ulong len)
    {
        lock (Reader.Handling) { _dontUnmapAddr = addr; _dontUnmapLen = len; }
    }

    /// <summary>Wait until every uffd event already read has been applied to the map.</summary>
    public void Barrier() { lock (Reader.Handling) { } }

    /// <summary>
    /// LAB_FORK_DONE: our fork returned <paramref name="pid"/>. The kernel returns from fork
    /// only once its FORK event has been read, and the shim forks one at a time, so once what
    /// was read is applied the newest unnamed child is this fork's. (Handing children out in
    /// event order instead gave a child that said hello first its sibling's uffd: it then
    /// registered its ranges in the sibling's mm, whose faults found them missing.)
    /// </summary>
    public void ForkDone(int pid)
    {
        Barrier();
        lock (_children)
            for (int i = _children.Count - 1; i >= 0; i--)
                if (_children[i].ForkPid == 0) { _children[i].ForkPid = pid; break; }
        _registry.ChildNamed();
    }

    /// <summary>The child named <paramref name="pid"/> by our LAB_FORK_DONE, taken out of the list; null if none.</summary>
    public LabProcess? TakeChild(int pid)
    {
        lock (_children)
        {
            int i = _children.FindIndex(c => c.ForkPid == pid);
            if (i < 0) return null;
            var c = _children[i];
            _children.RemoveAt(i);
            return c;
        }
    }

    /// <summary>Every unclaimed child, taken out of the list (this process is going).</summary>
    public List<LabProcess> TakeChildren()
    {
        lock (_children)
        {
            var all = new List<LabProcess>(_children);
            _children.Clear();
            return all;
        }
    }
}

/// <summary>Fault service time, log2 buckets of Stopwatch ticks (allocation-free recording).</summary>
public sealed class LatencyHistogram
{
    readonly long[] _buckets = new long[64];
    public void Record(long ticks) => Interlocked.Increment(ref _buckets[ticks <= 0 ? 0 : 63 - long.LeadingZeroCount(ticks)]);
    public void AddTo(LatencyHistogram total) { for (int i = 0; i < 64; i++) Interlocked.Add(ref total._buckets[i], Volatile.Read(ref _buckets[i])); }
    public long Count { get { long n = 0; for (int i = 0; i < 64; i++) n += Volatile.Read(ref _buckets[i]); return n; } }

    /// <summary>Quantile in microseconds (upper edge of the bucket it falls in).</summary>
    public double QuantileMicros(double q)
    {
        long total = Count;
        if (total == 0) return 0;
        long want = (long)Math.Ceiling(q * total), seen = 0;
        for (int i = 0; i < 64; i++)
        {
            seen += Volatile.Read(ref _buckets[i]);
            if (seen >= want) return (1L << (i + 1)) * 1e6 / Stopwatch.Frequency;
        }
        return 0;
    }
}
