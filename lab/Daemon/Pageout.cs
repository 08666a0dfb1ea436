using System.Buffers.Binary;
using Lab.Linux;
using Lab.Vm;

namespace Lab.Daemon;

/// <summary>
/// The pageout daemon: one thread that keeps each limited run (`lab run --resident-limit`)
/// and the whole mount (`lab mount --memory`) under their budgets. It chooses pages with
/// the VM's page queues (<see cref="AddressSpace.PageoutScan"/>: the VM saves dirty
/// anonymous pages to swap; the pmap queues each page it removes for the process's agent),
/// commits the swap cluster, and has the pmap send the batch to the agent
/// (<see cref="UffdPmap.SendRemoved"/>, <see cref="EvictAgent"/>). It never waits for an
/// agent: a process whose agent is busy is skipped until its reply wakes us.
/// </summary>
public sealed class PageoutDaemon : IDisposable
{
    public const int Batch = 256;
    const int Page = 4096;

    readonly Registry _registry;
    readonly StoreSwapDevice? _swap;
    readonly long _mountLimitPages;
    readonly Dictionary<ulong, RunLimit> _runs = new();
    readonly AutoResetEvent _wake = new(false);
    readonly ulong[] _begun = new ulong[Batch], _saved = new ulong[Batch];
    Thread? _thread;
    volatile bool _stop;

    public long Batches, PagesBegun, SwapFullStops, SharedPagesWritten, ScanTicks, FlushTicks;
    /// <summary>Pages an agent left in place because the kernel held them pinned for I/O.</summary>
    public long PinnedKept;
    /// <summary>Pages an agent put back because they had changed since they were saved (written through a pin released meanwhile).</summary>
    public long ChangedKept;
    /// <summary>Pages the agent found mlock'd that the model did not know were wired.</summary>
    public long LockedFound;

    public PageoutDaemon(Registry registry, StoreSwapDevice? swap, long mountLimitBytes)
    {
        _registry = registry; _swap = swap; _mountLimitPages = mountLimitBytes / Page;
        Mount.Pages = _mountLimitPages;
    }

    public long MountLimitPages => _mountLimitPages;

    /// <summary>The whole mount as one pool (`--memory`): every process's throttle looks at it too.</summary>
    public readonly RunLimit Mount = new(0);

    /// <summary>The limit object of one run (shared by its processes; 0 pages = none).</summary>
    public RunLimit LimitOf(ulong run)
    {
        lock (_runs)
        {
            if (!_runs.TryGetValue(run, out var l)) _runs[run] = l = new RunLimit(run);
            return l;
        }
    }

    /// <summary>A run that ended long ago: its limit goes (its processes hold the object if any remain).</summary>
    public void ForgetRun(ulong run)
    {
        lock (_runs) _runs.Remove(run);
    }

    /// <summary>Runs with a limit object (for the stats).</summary>
    public int RunLimits { get { lock (_runs) return _runs.Count; } }

    public void SetRunLimit(ulong run, long bytes)
    {
        LimitOf(run).Pages = bytes / Page;
        Kick();
    }

    public void Start()
    {
        _thread = new Thread(Loop) { IsBackground = true, Name = "pageout" };
        _thread.Start();
    }

    /// <summary>Look now (a process went over its limit, or an agent finished).</summary>
    public void Kick() => _wake.Set();

    void Loop()
    {
        while (!_stop)
        {
            _wake.WaitOne(5);
            if (_stop) break;
            try { Balance(); }
            catch (Exception e) { Log.Error($"pageout: {e.GetType().Name}: {e.Message}"); Thread.Sleep(100); }
        }
    }

    void Balance()
    {
        RunLimit[] limited;
        lock (_runs) limited = _runs.Values.Where(l => l.Pages > 0).ToArray();
        if (limited.Length == 0 && _mountLimitPages == 0) return;
        var live = _registry.Live();
        foreach (var l in limited) Trim(live.Where(p => p.RunId == l.Run).ToArray(), l, mount: false);
        if (_mountLimitPages > 0) Trim(live, Mount, mount: true);
    }

    /// <summary>Add up the pool's resident and wired pages, and note each process's share for its throttle.</summary>
    static long Total(LabProcess[] pool, RunLimit pl, bool mount)
    {
        long resident = 0, wired = 0;
        foreach (var p in pool)
        {
            int r = p.Space.ResidentPages;
            if (mount) p.MountBase = r; else p.RunBase = r;
            resident += r;
            wired += Math.Max(0, Interlocked.Read(ref p.Space.Counters.wired_pages));
        }
        Volatile.Write(ref pl.LastWired, wired);
        if (wired > pl.WiredMax) pl.WiredMax = wired;
        Volatile.Write(ref pl.LastTotal, resident);
        return resident;
    }

    /// <summary>Begin evictions in the pool until its resident pages are back under the limit (a little under, to batch).</summary>
    void Trim(LabProcess[] pool, RunLimit pl, bool mount)
    {
        long resident = Total(pool, pl, mount);
        // Wired (mlock'd) pages cannot go: a limit below them is reported once, and the pool
        // is held to its wired pages (the rest may still go), never spun on.
        long wired = Volatile.Read(ref pl.LastWired);
        if (wired > pl.Pages && !pl.WiredOverReported)
        {
            pl.WiredOverReported = true;
            pl.WiredOverLimit++;
            Log.Info($"{(mount ? "the mount" : $"run {pl.Run}")}: {wired} pages are wired (mlock), more than its resident limit of {pl.Pages} pages: they stay resident");
        }
        else if (wired <= pl.Pages) pl.WiredOverReported = false;
        long limit = pl.Effective;
        if (resident <= limit) { pl.Stuck = false; return; }
        long excess = resident - limit + Math.Min(limit / 16, Batch);
        var tried = new HashSet<LabProcess>();
        // Stuck: nothing could be taken (dirty pages and no swap, or a full one; wired pages)
        // and nothing is on its way out: faults must not wait for a pageout that cannot come.
        bool progress = pool.Any(p => p.Agent is { Busy: true, Dead: false });
        while (excess > 0 && !_stop)
        {
            // The biggest process whose agent is free.
            LabProcess? victim = null;
            foreach (var p in pool)
                if (!tried.Contains(p) && p.Agent is { Busy: false } && (victim == null || p.Space.ResidentPages > victim.Space.ResidentPages))
                    victim = p;
            if (victim == null) break;
            tried.Add(victim);
            long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
            int n = victim.ScanForPageout((int)Math.Min(excess, Batch), _begun, _saved, out bool swapFull);
            long t1 = System.Diagnostics.Stopwatch.GetTimestamp();
            ScanTicks += t1 - t0;
            if (swapFull) SwapFullStops++;
            Total(pool, pl, mount);   // the throttle's view, fresh after each batch
            if (n == 0) continue;
            progress = true;
            Batches++;
            PagesBegun += n;
            excess -= n;
            try
            {
                // The saved pages are committed before they leave the process (a failed commit
                // keeps them in the device's memory, where swap-ins find them).
                _swap?.Flush();
                FlushTicks += System.Diagnostics.Stopwatch.GetTimestamp() - t1;
                Array.Sort(_begun, _saved, 0, n);   // ascending: runs for the write-back and the agent's spans
                try { WriteBackShared(victim, n); }
                catch (Exception e) { Log.Error($"pid {victim.Pid}: write-back at pageout: {e.GetType().Name}: {e.Message}"); }
            }
            finally
            {
                // Whatever failed above, the batch goes: evictions begun and never sent would
                // hold their pages' faults back for good, and the next batch would not fit.
                victim.Pmap.SendRemoved(_begun.AsSpan(0, n), _saved.AsSpan(0, n));   // false: the agent went; the evictions were aborted
            }
        }
        pl.Stuck = !progress;
    }

    /// <summary>
    /// Pages of writable shared file mappings among those being evicted may be dirty (no
    /// dirty bit reaches us): write them back to the file, as a pageout of a dirty vnode
    /// page does. Their bytes stay in the lab's page cache (the memfd) meanwhile.
    /// </summary>
    void WriteBackShared(LabProcess victim, int n)
    {
        bool any = false;
        for (int i = 0; i < n;)
        {
            int j = i + 1;
            while (j < n && _begun[j] == _begun[j - 1] + Page) j++;
            ulong start = _begun[i], len = (ulong)(j - i) * Page;
            long marked = victim.MarkShared(start, len);
            SharedPagesWritten += marked;
            any |= marked > 0;
            i = j;
        }
        if (!any) return;
        int err = victim.FlushPending();
        if (err != 0) Log.Info($"pid {victim.Pid}: writing back shared pages at pageout: {Errno.StrError(err)}");
    }

    public void Dispose()
    {
        _stop = true;
        _wake.Set();
        _thread?.Join(TimeSpan.FromSeconds(5));
    }
}

/// <summary>The resident limit of one `lab run` (its processes together, or the whole mount), in pages; 0 = none.</summary>
public sealed class RunLimit(ulong run)
{
    public readonly ulong Run = run;
    public long Pages;
    /// <summary>The pool's wired pages when the pageout last added them up, and the most it saw.</summary>
    public long LastWired, WiredMax;
    /// <summary>Times the wired pages alone went over the limit (each reported once in the log).</summary>
    public long WiredOverLimit;
    public bool WiredOverReported;
    /// <summary>The limit the pageout holds the pool to: wired pages never go, so never below them.</summary>
    public long Effective => Math.Max(Pages, Volatile.Read(ref LastWired));
    /// <summary>The pool's resident pages when the pageout last added them up.</summary>
    public long LastTotal;
    /// <summary>The pageout could take nothing from the pool last time: its faults do not wait.</summary>
    public volatile bool Stuck;
    /// <summary>How far over the limit a pool may go before its faults wait: a batch or two of pageout.</summary>
    public long Slack => Math.Max(PageoutDaemon.Batch, Pages / 16);
}

/// <summary>
/// The daemon's end of a shim agent connection: sends LAB_EVICT for pages whose eviction the
/// VM began, and when the agent answers (its moves and madvises are done) completes the
/// evictions of the spans it did, aborts the others (those pages stay installed, clean
/// against their committed swap copies) and wakes the threads that faulted on them
/// meanwhile. One request in flight at a time.
/// </summary>
public sealed class EvictAgent : IUffdAgent
{
    readonly ControlConnection _conn;
    readonly LabProcess _proc;
    readonly PageoutDaemon _pageout;
    readonly ulong _scratch, _scratchEnd;
    readonly object _gate = new();       // the request in flight; held briefly
    readonly object _sendGate = new();   // a send vs the connection going away
    readonly object _finishGate = new(); // a Finish vs the process's teardown
    readonly byte[] _payload = new byte[Proto.MaxPayload];
    readonly ulong[] _pages = new ulong[PageoutDaemon.Batch];
    readonly int[] _pageSpan = new int[PageoutDaemon.Batch];
    readonly ulong[] _spanStart = new ulong[PageoutDaemon.Batch], _spanEnd = new ulong[PageoutDaemon.Batch];
    // Pages the agent left in place (the low bits say why: KeptPinned, KeptLocked), from its reply.
    readonly ulong[] _kept = new ulong[MaxKept];
    int _keptCount;
    int _pageCount, _spanCount, _payloadLength;
    const int MaxKept = 512;
    // Why a page was kept: pinned by the kernel, mlock'd, or written after it was saved (put back).
    const ulong KeptPinned = 1, KeptLocked = 2, KeptChanged = 3;
    uint _seq;
    volatile bool _busy, _dead, _finishing, _detached;

    public EvictAgent(ControlConnection conn, LabProcess proc, PageoutDaemon pageout, ulong scratch, ulong scratchLen)
    {
        _conn = conn; _proc = proc; _pageout = pageout;
        _scratch = scratch;
        _scratchEnd = scratch == 0 || scratchLen > ulong.MaxValue - scratch ? scratch : scratch + scratchLen;
    }

    public bool Busy => _busy || _dead;
    public bool Dead => _dead;

    /// <summary>
    /// Ask the agent to drop these pages (whose eviction has begun; ascending), with the check
    /// word of the bytes saved for each (0: none saved now): a page that no longer matches as it
    /// leaves was written through a kernel pin meanwhile, and the agent puts it back. False: the
    /// agent is gone; the evictions were aborted here.
    /// </summary>
    public bool Send(ReadOnlySpan<ulong> vas, ReadOnlySpan<ulong> saved)
    {
        lock (_gate)
        {
            vas.CopyTo(_pages);
            _pageCount = vas.Length;
            _spanCount = 0;
            for (int i = 0; i < _pageCount; i++)
            {
                ulong va = _pages[i];
                if (_spanCount == 0 || _spanEnd[_spanCount - 1] != va)
                {
                    _spanStart[_spanCount] = va;
                    _spanEnd[_spanCount++] = va;
                }
                _spanEnd[_spanCount - 1] = va + 4096;
                _pageSpan[i] = _spanCount - 1;
            }
            // u32 spans, u32 pages, the spans, then each page's check word.
            BinaryPrimitives.WriteUInt32LittleEndian(_payload, (uint)_spanCount);
            BinaryPrimitives.WriteUInt32LittleEndian(_payload.AsSpan(4), (uint)_pageCount);
            for (int i = 0; i < _spanCount; i++)
            {
                BinaryPrimitives.WriteUInt64LittleEndian(_payload.AsSpan(8 + i * 16), _spanStart[i]);
                BinaryPrimitives.WriteUInt64LittleEndian(_payload.AsSpan(8 + i * 16 + 8), _spanEnd[i] - _spanStart[i]);
            }
            int checks = 8 + _spanCount * Proto.SpanSize;
            for (int i = 0; i < _pageCount; i++)
                BinaryPrimitives.WriteUInt64LittleEndian(_payload.AsSpan(checks + i * 8), i < saved.Length ? saved[i] : 0);
            _payloadLength = checks + _pageCount * 8;
            _busy = true;
            _seq++;
        }
        bool sent;
        lock (_sendGate) sent = !_dead && _conn.Send(Proto.Evict, _seq, 0, _payload.AsSpan(0, _payloadLength));
        if (sent) return true;
        _dead = true;
        Finish(0);
        return false;
    }

    /// <summary>
    /// Uffd thread: is this REMOVE event our agent's own (its scratch area, or a madvise inside
    /// a span in flight)? Then it is the eviction under way, not the program discarding memory.
    /// </summary>
    public bool Covers(ulong start, ulong end)
    {
        if (_scratch != 0 && start >= _scratch && end <= _scratchEnd) return true;
        if (!_busy || _finishing) return false;
        lock (_gate)
        {
            if (!_busy || _finishing) return false;
            for (int i = 0; i < _spanCount; i++)
                if (start >= _spanStart[i] && end <= _spanEnd[i]) return true;
            return false;
        }
    }

    /// <summary>The connection's thread: read the agent's replies until it goes.</summary>
    public void ReadReplies()
    {
        try
        {
            while (_conn.Receive() is Message m)
            {
                m.Fd?.Dispose();
                if (m.Type != (Proto.Evict | Proto.Reply) || m.Seq != _seq || !_busy) break;   // not ours: drop the agent
                var p = _conn.Payload(m);
                int done = p.Length >= 4 ? (int)Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(p), (uint)_spanCount) : 0;
                _keptCount = p.Length >= 8 ? (int)Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(p[4..]), (uint)Math.Min(MaxKept, (p.Length - 8) / 8)) : 0;
                for (int i = 0; i < _keptCount; i++) _kept[i] = BinaryPrimitives.ReadUInt64LittleEndian(p[(8 + i * 8)..]);
                Array.Sort(_kept, 0, _keptCount);   // by address (the reason is in the low bits); Finish walks both in order
                if (m.Status == 0 && p.Length >= 4) done = _spanCount;
                else if (m.Status != Errno.EAGAIN)
                    Log.Info($"pid {_proc.Pid}: the agent could not drop pages: {Errno.StrError(m.Status)}");
                Finish(done);
            }
        }
        finally
        {
            // No more sends on this connection: the caller closes it when we return.
            lock (_sendGate) _dead = true;
            Finish(0);
        }
    }

    /// <summary>Pages the program mlock'd behind the lab's back (madvise refused them): wired in the model from now on.</summary>
    void LockedRun(ulong start, ulong end)
    {
        if (end <= start) return;
        _proc.Space.MarkWired(start, end - start);
        Interlocked.Add(ref _pageout.LockedFound, (long)((end - start) >> 12));
    }

    /// <summary>The process is being torn down: no more Finish touches its space or pmap after this returns.</summary>
    public void Detach()
    {
        lock (_sendGate) _dead = true;
        lock (_finishGate) _detached = true;
    }

    /// <summary>
    /// The agent answered (or went): spans before <paramref name="doneSpans"/> left the process,
    /// so their evictions complete; the others are aborted (their pages may still be there).
    /// </summary>
    void Finish(int doneSpans)
    {
        // Every REMOVE of this request was read before the agent answered (its madvise waits
        // for that), but maybe not yet handled: the reader reads a batch, then handles it.
        // Once the batch is handled, Covers may say no.
        lock (_finishGate)
        {
            if (_detached) { lock (_gate) { _busy = false; _pageCount = _spanCount = 0; } return; }
            _proc.Barrier();
            // Not under _gate: CompleteEvict takes the map lock, which the uffd thread may hold
            // while it asks Covers.
            lock (_gate)
            {
                if (!_busy || _finishing) return;
                _finishing = true;
            }
            // Kept pages stay: pinned ones (the kernel's I/O into them is under way) until a
            // later pageout; mlock'd ones are wired from now on, so no pageout picks them again.
            int k = 0;
            ulong lockedStart = 0, lockedEnd = 0;
            for (int i = 0; i < _pageCount; i++)
            {
                ulong va = _pages[i];
                while (k < _keptCount && (_kept[k] & ~0xfffUL) < va) k++;
                bool kept = k < _keptCount && (_kept[k] & ~0xfffUL) == va;
                if (_pageSpan[i] < doneSpans && !kept) _proc.Space.CompleteEvict(va);
                else _proc.Space.AbortEvict(va);
                if (kept && (_kept[k] & 3) == KeptLocked)
                {
                    if (va != lockedEnd) { LockedRun(lockedStart, lockedEnd); lockedStart = va; }
                    lockedEnd = va + 4096;
                }
                else if (kept && (_kept[k] & 3) == KeptChanged) Interlocked.Increment(ref _pageout.ChangedKept);
                else if (kept) Interlocked.Increment(ref _pageout.PinnedKept);
            }
            LockedRun(lockedStart, lockedEnd);
            _keptCount = 0;
            for (int i = 0; i < _spanCount; i++) _proc.Pmap.Wake(_spanStart[i], _spanEnd[i] - _spanStart[i]);
            lock (_gate)
            {
                _pageCount = _spanCount = 0;
                _finishing = false;
                _busy = false;
            }
        }
        _pageout.Kick();
    }
}
