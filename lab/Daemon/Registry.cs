using System.Diagnostics.Metrics;
using System.Text;
using Lab.Vm;

namespace Lab.Daemon;

/// <summary>
/// The live processes, and the counters of those that have gone (retired per run, so
/// `lab run --stats` reports exactly its own program). Its lock is taken when a process
/// connects, goes, or stats are read: never on the fault path.
/// </summary>
public sealed class Registry
{
    readonly object _gate = new();
    readonly List<LabProcess> _live = new();
    readonly Dictionary<ulong, Retired> _retired = new();   // key 0: the whole mount
    readonly Meter _meter = new("Lab", "1.0");
    readonly string _defaultVm;

    sealed class Retired
    {
        public readonly VmCounters Counters = new();
        public readonly LatencyHistogram Latency = new();
        public long Processes, LookupMisses, InstallErrors, Superseded, Events, Resyncs, Throttled, ReleasedRanges, ReleasedPages;
        public long Unserved;   // programs of the run that were exec'd but could not load the shim (static)
        public long FileFaults;
        public OutsidePages Outside;
    }

    public Registry(string defaultVm)
    {
        _defaultVm = defaultVm;
        _retired[0] = new Retired();
        // dotnet-counters sees the same counters as `lab stat`.
        foreach (var name in new VmCounters().Snapshot().Select(kv => kv.Key))
        {
            var n = name;
            _meter.CreateObservableCounter(n, () => Total(0).Counters.Snapshot().First(kv => kv.Key == n).Value);
        }
    }

    public void Add(LabProcess p) { lock (_gate) { _live.Add(p); _processesEver++; } }

    /// <summary>Processes ever added (the idle trim runs once after each busy spell).</summary>
    public long ProcessesEver { get { lock (_gate) return _processesEver; } }
    long _processesEver;

    /// <summary>The counters of this many ended runs are kept (for `lab run --stats`); older ones are dropped.</summary>
    public const int RunsKept = 256;
    readonly Queue<ulong> _ended = new();
    readonly HashSet<ulong> _endedSet = new();

    /// <summary>Called (under no lock of ours) with a run whose counters were dropped: its other state can go too.</summary>
    public Action<ulong>? RunForgotten;

    /// <summary>Runs whose counters are kept (per-run entries, the mount's total excluded).</summary>
    public int RunsTracked { get { lock (_gate) return _retired.Count - 1; } }

    public int LiveCount { get { lock (_gate) return _live.Count; } }

    public LabProcess[] Live() { lock (_gate) return _live.ToArray(); }

    // Named fork children whose parent went before they said hello (a parent that forks and
    // exits at once): still theirs to claim, for a while.
    readonly List<LabProcess> _orphans = new();

    /// <summary>
    /// CHILD_HELLO of <paramref name="pid"/>: the child space its parent's LAB_FORK_DONE named,
    /// waiting for that (the child may say hello before its parent's fork has returned).
    /// </summary>
    public LabProcess? ClaimForked(int pid, TimeSpan wait)
    {
        var deadline = DateTime.UtcNow + wait;
        lock (_gate)
        {
            while (true)
            {
                foreach (var p in _live)
                    if (p.TakeChild(pid) is { } c) return c;
                int o = _orphans.FindIndex(c => c.ForkPid == pid);
                if (o >= 0) { var c = _orphans[o]; _orphans.RemoveAt(o); return c; }
                var left = deadline - DateTime.UtcNow;
                if (left <= TimeSpan.Zero) return null;
                Monitor.Wait(_gate, left);
            }
        }
    }

    /// <summary>A parent named a child: wake the hellos waiting for theirs.</summary>
    public void ChildNamed() { lock (_gate) Monitor.PulseAll(_gate); }

    /// <summary>Keep a gone parent's named child claimable.</summary>
    public void AddOrphan(LabProcess child) { lock (_gate) { _orphans.Add(child); Monitor.PulseAll(_gate); } }

    /// <summary>True if the orphan was still unclaimed (the caller then tears it down).</summary>
    public bool RemoveOrphan(LabProcess child) { lock (_gate) return _orphans.Remove(child); }

    /// <summary>The unclaimed fork child named <paramref name="pid"/> (reaped before it said hello), taken out.</summary>
    public LabProcess? TakeUnclaimed(int pid)
    {
        lock (_gate)
        {
            foreach (var p in _live)
                if (p.TakeChild(pid) is { } c) return c;
            int o = _orphans.FindIndex(c => c.ForkPid == pid);
            if (o < 0) return null;
            var r = _orphans[o];
            _orphans.RemoveAt(o);
            return r;
        }
    }

    public void Retire(LabProcess p)
    {
        List<ulong> forgotten;
        lock (_gate)
        {
            if (!_live.Remove(p)) return;
            foreach (var key in p.RunId == 0 ? new ulong[] { 0 } : new ulong[] { 0, p.RunId })
            {
                if (!_retired.TryGetValue(key, out var r)) _retired[key] = r = new Retired();
                Fold(p, r);
            }
            if (p.RunId != 0 && _endedSet.Add(p.RunId)) _ended.Enqueue(p.RunId);
            forgotten = ForgetOldRuns();
        }
        foreach (var run in forgotten) RunForgotten?.Invoke(run);
    }

    /// <summary>
    /// Drops the counters of the oldest ended runs beyond <see cref="RunsKept"/> (under _gate):
    /// a daemon that serves runs for days must not keep every run's stats. A run still live
    /// (an exec'd image reconnecting) is kept and looked at again later.
    /// </summary>
    List<ulong> ForgetOldRuns()
    {
        var gone = new List<ulong>();
        for (int tries = _ended.Count; _ended.Count > RunsKept && tries > 0; tries--)
        {
            ulong run = _ended.Dequeue();
            if (_live.Any(x => x.RunId == run)) { _ended.Enqueue(run); continue; }
            _endedSet.Remove(run);
            _retired.Remove(run);
            gone.Add(run);
        }
        return gone;
    }

    /// <summary>A program of this run runs outside the lab (see LabDaemon.CheckExec).</summary>
    public void NoteUnserved(ulong run)
    {
        lock (_gate)
            foreach (var key in run == 0 ? new ulong[] { 0 } : new ulong[] { 0, run })
            {
                if (!_retired.TryGetValue(key, out var r)) _retired[key] = r = new Retired();
                r.Unserved++;
            }
    }

    static void Fold(LabProcess p, Retired r)
    {
        p.Space.Counters.AddTo(r.Counters);
        p.Latency.AddTo(r.Latency);
        r.Processes++;
        r.LookupMisses += p.LookupMisses; r.Events += p.Events; r.Resyncs += p.Resyncs;
        r.Throttled += Interlocked.Read(ref p.ThrottledFaults);
        r.ReleasedRanges += Interlocked.Read(ref p.ReleasedRanges); r.ReleasedPages += Interlocked.Read(ref p.ReleasedPages);
        r.InstallErrors += p.Pmap.InstallErrors; r.Superseded += p.Pmap.Superseded;
        r.FileFaults += Interlocked.Read(ref p.Space.FileFaults);
        r.Outside += p.Outside;
    }

    Retired Total(ulong run)
    {
        lock (_gate)
        {
            var t = new Retired();
            if (_retired.TryGetValue(run, out var r))
            {
                r.Counters.AddTo(t.Counters); r.Latency.AddTo(t.Latency);
                t.Processes = r.Processes; t.LookupMisses = r.LookupMisses;
                t.InstallErrors = r.InstallErrors; t.Superseded = r.Superseded; t.Events = r.Events; t.Resyncs = r.Resyncs;
                t.Throttled = r.Throttled; t.ReleasedRanges = r.ReleasedRanges; t.ReleasedPages = r.ReleasedPages;
                t.Unserved = r.Unserved; t.FileFaults = r.FileFaults; t.Outside = r.Outside;
            }
            foreach (var p in _live)
                if (run == 0 || p.RunId == run) Fold(p, t);
            return t;
        }
    }

    /// <summary>The stats text: `name value` lines (the format of `.lab/stats` and `lab stat`).</summary>
    public string Render(ulong run, string mount)
    {
        var t = Total(run);
        var sb = new StringBuilder();
        sb.Append("# lab stats: ").Append(run == 0 ? "mount " + mount : $"run {run}").Append(", default vm ").Append(_defaultVm).Append('\n');
        foreach (var kv in t.Counters.Snapshot()) sb.Append(kv.Key).Append(' ').Append(kv.Value).Append('\n');
        sb.Append("processes ").Append(t.Processes).Append('\n');
        sb.Append("processes_alive ").Append(run == 0 ? LiveCount : Live().Count(p => p.RunId == run)).Append('\n');
        sb.Append("uffd_events ").Append(t.Events).Append('\n');
        sb.Append("lookup_miss ").Append(t.LookupMisses).Append('\n');
        sb.Append("install_superseded ").Append(t.Superseded).Append('\n');
        sb.Append("install_errors ").Append(t.InstallErrors).Append('\n');
        sb.Append("model_resyncs ").Append(t.Resyncs).Append('\n');
        sb.Append("faults_throttled ").Append(t.Throttled).Append('\n');
        sb.Append("uffd_released_ranges ").Append(t.ReleasedRanges).Append('\n');
        sb.Append("uffd_released_pages ").Append(t.ReleasedPages).Append('\n');
        sb.Append("unserved_programs ").Append(t.Unserved).Append('\n');
        sb.Append("fault_count ").Append(t.Latency.Count).Append('\n');
        sb.Append("fault_latency_us_p50 ").Append(t.Latency.QuantileMicros(0.5).ToString("0.0")).Append('\n');
        sb.Append("fault_latency_us_p99 ").Append(t.Latency.QuantileMicros(0.99).ToString("0.0")).Append('\n');
        t.Outside.AppendTo(sb, t.FileFaults);
        return sb.ToString();
    }
}
