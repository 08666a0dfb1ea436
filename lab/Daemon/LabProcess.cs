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
public sealed unsafe class LabProcess
{
    public int Pid;
    public readonly ulong RunId;
    public readonly string Comm;
    public readonly AddressSpace Space;
    public readonly UffdPmap Pmap;
    public readonly LatencyHistogram Latency = new();
    public long LookupMisses, InternalErrors, Events, Resyncs;
    /// <summary>The shim's agent (pageout's MADV_DONTNEED in the process); null until it connects.</summary>
    public volatile EvictAgent? Agent;
    /// <summary>The run's resident limit, and the pageout to wake when this process passes it.</summary>
    public RunLimit? Limit, MountLimit;
    public PageoutDaemon? Pageout;
    public long ThrottledFaults;
    ulong _lastSuperseded = ulong.MaxValue;   // fault thread only
    int _supersededRun;
    public readonly Queue<LabProcess> PendingChildren = new();   // from UFFD_EVENT_FORK, not yet claimed
    readonly Registry _registry;
    readonly int _stopFd;
    Thread? _thread;
    int _stopped, _gone;
    // Held while a batch of uffd messages is read and applied. The kernel releases a
    // program's munmap/mremap once its event is *read*; a control request that follows
    // takes this lock to know the event has also been *applied* (see Barrier).
    readonly object _handling = new();

    readonly ManualResetEventSlim _torndown = new();

    /// <summary>True once: the caller tears the process down, then calls <see cref="TornDown"/>.</summary>
    public bool MarkGone() => Interlocked.Exchange(ref _gone, 1) == 0;

    public void TornDown() => _torndown.Set();

    /// <summary>Another thread is tearing it down: wait for that to finish (bounded).</summary>
    public void WaitTornDown() => _torndown.Wait(TimeSpan.FromSeconds(30));

    public LabProcess(Registry registry, int pid, ulong runId, string comm, AddressSpace space, UffdPmap pmap)
    {
        _registry = registry; Pid = pid; RunId = runId; Comm = comm; Space = space; Pmap = pmap;
        _stopFd = Native.eventfd(0, Native.EFD_CLOEXEC | Native.EFD_NONBLOCK);
        pmap.DrainEvents = DrainEvents;
    }

    public void Start()
    {
        _thread = new Thread(Loop) { IsBackground = true, Name = $"uffd {Comm}" };
        _thread.Start();
    }

    /// <summary>Stop the fault thread and wait for it; the caller then destroys the space.</summary>
    public void Stop()
    {
        if (Interlocked.Exchange(ref _stopped, 1) != 0) return;
        ulong one = 1;
        Native.write(_stopFd, &one, 8);
        if (_thread != null && _thread != Thread.CurrentThread) _thread.Join();
        Native.close(_stopFd);
    }

    void Loop()
    {
        Pmap.ReaderThreadId = Environment.CurrentManagedThreadId;
        try { ReadEvents(); }
        catch (Exception e) { Log.Error($"uffd thread of pid {Pid}: {e.GetType().Name}: {e.Message}"); }
        finally { NativeMemory.Free(_aside); }
    }

    void ReadEvents()
    {
        const int Batch = 16;
        var msgs = (Native.UffdMsg*)NativeMemory.Alloc((nuint)(Batch * sizeof(Native.UffdMsg)));
        var fds = stackalloc Native.PollFd[2];
        try
        {
            while (true)
            {
                fds[0] = new Native.PollFd { Fd = Pmap.Uffd, Events = Native.POLLIN };
                fds[1] = new Native.PollFd { Fd = _stopFd, Events = Native.POLLIN };
                int rc = Native.poll(fds, 2, PollTimeout);
                if (rc < 0) { if (Native.Errno == Native.EINTR) continue; break; }
                if (fds[1].Revents != 0) break;
                if ((fds[0].Revents & (Native.POLLERR | Native.POLLNVAL)) != 0) break;
                if (rc == 0)
                {
                    lock (_handling) { HandleSetAside(); Settle(); }
                    continue;
                }
                lock (_handling)
                {
                    nint n = Native.read(Pmap.Uffd, msgs, (nuint)(Batch * sizeof(Native.UffdMsg)));
                    if (n < 0)
                    {
                        int e = Native.Errno;
                        if (e is Native.EAGAIN or Native.EINTR) continue;
                        break;
                    }
                    int count = (int)(n / sizeof(Native.UffdMsg));
                    for (int i = 0; i < count; i++) Handle(ref msgs[i]);
                    HandleSetAside();   // read after this batch, so handled after it
                    Settle();
                }
            }
        }
        finally { NativeMemory.Free(msgs); }
    }

    // Messages read by DrainEvents while a fault was being installed, handled in order after it.
    const int AsideCapacity = 1024;
    readonly Native.UffdMsg* _aside = (Native.UffdMsg*)NativeMemory.Alloc((nuint)(AsideCapacity * sizeof(Native.UffdMsg)));
    int _asideHead, _asideCount;

    /// <summary>
    /// Reader thread, inside an install that got EAGAIN: an event is waiting behind the
    /// pending faults. Read messages aside until it has been read (or none are left), so the
    /// install can go through; they are handled, in order, once the current fault is done.
    /// Our agent's own REMOVE needs nothing from the model and is consumed here.
    /// </summary>
    void DrainEvents()
    {
        while (_asideCount < AsideCapacity)
        {
            Native.UffdMsg m;
            nint n = Native.read(Pmap.Uffd, &m, (nuint)sizeof(Native.UffdMsg));
            if (n != sizeof(Native.UffdMsg)) return;   // EAGAIN: nothing more to read
            if (m.Event == Native.UFFD_EVENT_REMOVE && Agent?.Covers(m.Arg0, m.Arg1) == true)
            {
                Interlocked.Increment(ref Events);
                return;
            }
            _aside[(_asideHead + _asideCount) % AsideCapacity] = m;
            _asideCount++;
            if (m.Event != Native.UFFD_EVENT_PAGEFAULT) return;
        }
    }

    void HandleSetAside()
    {
        while (_asideCount > 0)
        {
            var m = _aside[_asideHead];
            _asideHead = (_asideHead + 1) % AsideCapacity;
            _asideCount--;
            Handle(ref m);
        }
    }

    void Handle(ref Native.UffdMsg m)
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
                case Native.UFFD_EVENT_REMAP: Interlocked.Increment(ref Events); Space.Remap(m.Arg0, m.Arg1, m.Arg2); break;
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
            Interlocked.Increment(ref InternalErrors);
            Log.Error($"pid {Pid}: internal error on uffd event {m.Event:x}: {e.GetType().Name}: {e.Message}");
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

    /// <summary>Poll timeout: none while messages wait aside, short while faults are held back.</summary>
    int PollTimeout => _asideCount > 0 ? 0 : _deferCount > 0 ? 1 : -1;

    /// <summary>Resolve held-back faults that may go, and handle whatever that read aside.</summary>
    void Settle()
    {
        ResolveDeferred(force: false);
        HandleSetAside();
    }

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
            Interlocked.Increment(ref InternalErrors);
            Log.Error($"pid {Pid}: internal error on a fault at {address:x}: {e.GetType().Name}: {e.Message}");
            Pmap.Poison(address & ~0xfffUL);
        }
    }

    void Resolve(ulong flags, ulong address)
    {
        long t0 = Stopwatch.GetTimestamp();
        ulong va = address & ~0xfffUL;
        var access = (flags & Native.UFFD_PAGEFAULT_FLAG_WP) != 0 ? FaultAccess.WriteProtect
            : (flags & Native.UFFD_PAGEFAULT_FLAG_WRITE) != 0 ? FaultAccess.Write : FaultAccess.Read;
        var result = Space.Fault(va, access);
        if (result == FaultResult.SigSegv)
        {
            // The kernel let the access through, so the model is missing the range: say so loudly.
            Interlocked.Increment(ref LookupMisses);
            Pmap.Poison(va);
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
        var pmap = new UffdPmap(childUffd);
        var child = new LabProcess(_registry, 0, RunId, Comm, Space.Fork(pmap), pmap) { Limit = Limit, MountLimit = MountLimit, Pageout = Pageout };
        _registry.Add(child);
        child.Start();
        lock (PendingChildren)
        {
            PendingChildren.Enqueue(child);
            Monitor.PulseAll(PendingChildren);
        }
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
        lock (_handling) return Space.PageoutScan(want, begun, saved, out swapFull);
    }

    /// <summary>Wait until every uffd event already read has been applied to the map.</summary>
    public void Barrier() { lock (_handling) { } }

    /// <summary>Take the oldest child from a FORK event, waiting a little for the event to be processed.</summary>
    public LabProcess? ClaimChild(TimeSpan wait)
    {
        var deadline = DateTime.UtcNow + wait;
        lock (PendingChildren)
        {
            while (PendingChildren.Count == 0)
            {
                var left = deadline - DateTime.UtcNow;
                if (left <= TimeSpan.Zero || Volatile.Read(ref _stopped) != 0) return null;
                Monitor.Wait(PendingChildren, left);
            }
            return PendingChildren.Dequeue();
        }
    }

    public bool HasPendingChildren { get { lock (PendingChildren) return PendingChildren.Count > 0; } }
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

internal static class Log
{
    static readonly object Gate = new();
    public static void Info(string s) { lock (Gate) Console.Error.WriteLine($"lab: {s}"); }
    public static void Error(string s) { lock (Gate) Console.Error.WriteLine($"lab: error: {s}"); }
}
