using System.Runtime.CompilerServices;

namespace Lab.Daemon;

/// <summary>
/// The daemon's log (stderr; `/run/lab/mount-*.log` in the background). Every message is
/// rate-limited by the line of code that logs it: the first of each kind in a minute is
/// written with its details, the others are counted and summed up once the minute is over
/// ("N more like this in the last minute"), so an error that repeats a million times is
/// neither silent nor a flood.
/// </summary>
internal static class Log
{
    sealed class Site
    {
        public long WindowStart;
        public long Suppressed;
        public string Prefix = "", First = "";
    }

    static readonly object Gate = new();
    static readonly Dictionary<(string File, int Line), Site> Sites = new();
    static Timer? _timer;

    /// <summary>The window of one kind (LAB_LOG_WINDOW_MS shortens it for tests).</summary>
    static readonly long WindowMs =
        long.TryParse(Environment.GetEnvironmentVariable("LAB_LOG_WINDOW_MS"), out long ms) && ms > 0 ? ms : 60_000;

    public static void Info(string s, [CallerFilePath] string file = "", [CallerLineNumber] int line = 0) =>
        Write("lab: ", s, file, line);

    public static void Error(string s, [CallerFilePath] string file = "", [CallerLineNumber] int line = 0) =>
        Write("lab: error: ", s, file, line);

    /// <summary>Rate-limited by <paramref name="kind"/> instead of the line of code: one line logging
    /// many kinds (the file system's failed operations, by operation and errno).</summary>
    public static void Keyed(string kind, string s) => Write("lab: ", s, kind, 0);

    static void Write(string prefix, string s, string file, int line)
    {
        lock (Gate)
        {
            long now = Environment.TickCount64;
            if (!Sites.TryGetValue((file, line), out var site))
                Sites[(file, line)] = site = new Site { WindowStart = now - WindowMs };
            if (now - site.WindowStart < WindowMs)
            {
                site.Suppressed++;
                _timer ??= new Timer(_ => Summarize(), null, WindowMs / 4, WindowMs / 4);
                return;
            }
            Summarize(site);
            site.WindowStart = now;
            site.Prefix = prefix;
            site.First = s;
            Console.Error.WriteLine(prefix + s);
        }
    }

    /// <summary>Write the summary of every kind whose window is over.</summary>
    static void Summarize()
    {
        lock (Gate)
        {
            long now = Environment.TickCount64;
            foreach (var site in Sites.Values)
                if (now - site.WindowStart >= WindowMs) Summarize(site);
        }
    }

    static void Summarize(Site site)
    {
        if (site.Suppressed == 0) return;
        string per = WindowMs == 60_000 ? "minute" : $"{WindowMs} ms";
        Console.Error.WriteLine($"{site.Prefix}{site.Suppressed} more like this in the last {per}: {site.First}");
        site.Suppressed = 0;
    }

    /// <summary>At exit: the counts not yet written.</summary>
    public static void Flush()
    {
        lock (Gate) foreach (var site in Sites.Values) Summarize(site);
    }
}
