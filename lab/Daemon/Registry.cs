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
        public long Processes, LookupMisses, InternalErrors, InstallErrors, Superseded, Events, Resyncs, Throttled;
        public long Unserved;   // programs of the run that were exec'd but could not load the shim (static)
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

    public void Add(LabProcess p) { lock (_gate) _live.Add(p); }

    public int LiveCount { get { lock (_gate) return _live.Count; } }

    public LabProcess[] Live() { lock (_gate) return _live.ToArray(); }

    /// <summary>The live process with this pid that has children from a FORK event waiting to be claimed.</summary>
    public LabProcess? ForkParent(int ppid)
    {
        lock (_gate)
        {
            LabProcess? best = null;
            foreach (var p in _live)
                if (p.Pid == ppid && (best == null || p.HasPendingChildren)) best = p;
            return best;
        }
    }

    public void Retire(LabProcess p)
    {
        lock (_gate)
        {
            if (!_live.Remove(p)) return;
            foreach (var key in p.RunId == 0 ? new ulong[] { 0 } : new ulong[] { 0, p.RunId })
            {
                if (!_retired.TryGetValue(key, out var r)) _retired[key] = r = new Retired();
                Fold(p, r);
            }
        }
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
        r.LookupMisses += p.LookupMisses; r.InternalErrors += p.InternalErrors; r.Events += p.Events; r.Resyncs += p.Resyncs;
        r.Throttled += Interlocked.Read(ref p.ThrottledFaults);
        r.InstallErrors += p.Pmap.InstallErrors; r.Superseded += p.Pmap.Superseded;
    }

    Retired Total(ulong run)
    {
        lock (_gate)
        {
            var t = new Retired();
            if (_retired.TryGetValue(run, out var r))
            {
                r.Counters.AddTo(t.Counters); r.Latency.AddTo(t.Latency);
                t.Processes = r.Processes; t.LookupMisses = r.LookupMisses; t.InternalErrors = r.InternalErrors;
                t.InstallErrors = r.InstallErrors; t.Superseded = r.Superseded; t.Events = r.Events; t.Resyncs = r.Resyncs;
                t.Throttled = r.Throttled; t.Unserved = r.Unserved;
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
        sb.Append("internal_errors ").Append(t.InternalErrors).Append('\n');
        sb.Append("unserved_programs ").Append(t.Unserved).Append('\n');
        sb.Append("fault_count ").Append(t.Latency.Count).Append('\n');
        sb.Append("fault_latency_us_p50 ").Append(t.Latency.QuantileMicros(0.5).ToString("0.0")).Append('\n');
        sb.Append("fault_latency_us_p99 ").Append(t.Latency.QuantileMicros(0.99).ToString("0.0")).Append('\n');
        return sb.ToString();
    }
}
