using System.Diagnostics;

namespace Lab.Daemon;

/// <summary>
/// One kind of error line, rate-limited: the first is logged at once, then at most one per
/// <see cref="Interval"/>, each saying how many were left out since the last. A program that
/// faults a failing page in a loop must not fill the log, nor go unreported.
/// </summary>
internal sealed class LogLimiter
{
    public static readonly TimeSpan Interval = TimeSpan.FromSeconds(10);
    readonly object _gate = new();
    long _last = long.MinValue;
    long _suppressed;

    /// <summary>Logs <paramref name="message"/> unless one was logged less than an interval ago.</summary>
    public void Error(string message)
    {
        long now = Stopwatch.GetTimestamp(), left;
        lock (_gate)
        {
            if (_last != long.MinValue && Stopwatch.GetElapsedTime(_last, now) < Interval) { _suppressed++; return; }
            _last = now;
            left = _suppressed;
            _suppressed = 0;
        }
        Log.Error(left == 0 ? message : $"{message} ({left} more like this not logged)");
    }
}
