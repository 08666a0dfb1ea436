using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;

[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]

namespace Lab.Tests;

/// <summary>
/// A test that needs the kernel (/dev/fuse, userfaultfd). Without them it is skipped with a
/// reason, except under LAB_REQUIRE_KERNEL=1 (CI), where it runs and fails loudly.
/// </summary>
public sealed class KernelFactAttribute : FactAttribute
{
    public KernelFactAttribute()
    {
        if (Environment.GetEnvironmentVariable("LAB_REQUIRE_KERNEL") == "1") return;
        var missing = Repo.MissingKernelFeature();
        if (missing != null) Skip = $"needs {missing} (set LAB_REQUIRE_KERNEL=1 to fail instead)";
    }
}

/// <summary>A <see cref="KernelFactAttribute"/> with data: one case per design, say.</summary>
public sealed class KernelTheoryAttribute : TheoryAttribute
{
    public KernelTheoryAttribute()
    {
        if (Environment.GetEnvironmentVariable("LAB_REQUIRE_KERNEL") == "1") return;
        var missing = Repo.MissingKernelFeature();
        if (missing != null) Skip = $"needs {missing} (set LAB_REQUIRE_KERNEL=1 to fail instead)";
    }
}

public static class Repo
{
    /// <summary>Every fault handler design, as xunit theory data.</summary>
    public static IEnumerable<object[]> Designs => global::Lab.Vm.Resolvers.Names.Select(n => new object[] { n });

    public static string Root { get; } = FindRoot();
    public static string Config => AppContext.BaseDirectory.Contains("/Debug/") ? "Debug" : "Release";
    public static string Lab => Path.Combine(Root, "lab", "bin", Config, "net10.0", "lab");
    public static string Shim => Path.Combine(Root, "build", "liblabpreload.so");
    public static string Prog(string name) => Path.Combine(Root, "build", name);

    /// <summary>The python3 binary itself (not a version manager's wrapper script), so a run is one process.</summary>
    public static string Python { get; } = FindPython();

    static string FindPython()
    {
        try
        {
            var psi = new ProcessStartInfo("python3", "-c \"import sys; print(sys.executable)\"") { RedirectStandardOutput = true };
            using var p = Process.Start(psi)!;
            var path = p.StandardOutput.ReadToEnd().Trim();
            p.WaitForExit();
            return File.Exists(path) ? path : "python3";
        }
        catch (System.ComponentModel.Win32Exception) { return "python3"; }
    }

    static string FindRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "Lab.sln"))) return d.FullName;
        throw new InvalidOperationException("Lab.sln not found above " + AppContext.BaseDirectory);
    }

    public static string? MissingKernelFeature()
    {
        if (!File.Exists("/dev/fuse")) return "/dev/fuse";
        if (!File.Exists("/dev/userfaultfd") && !File.Exists("/proc/sys/vm/unprivileged_userfaultfd")) return "userfaultfd";
        return null;
    }
}

public sealed record RunResult(int ExitCode, string Stdout, string Stderr)
{
    public override string ToString() => $"exit {ExitCode}\n--- stdout\n{Stdout}\n--- stderr\n{Stderr}";
}

public static class Sh
{
    /// <summary>Run a program to completion (bounded), capturing its output.</summary>
    public static RunResult Run(string exe, IEnumerable<string> args, IDictionary<string, string>? env = null,
        int timeoutMs = 120_000, string? cwd = null)
    {
        var psi = new ProcessStartInfo(exe)
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false,
        };
        if (cwd != null) psi.WorkingDirectory = cwd;
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["LAB_PRELOAD"] = Repo.Shim;
        if (env != null) foreach (var kv in env) psi.Environment[kv.Key] = kv.Value;
        using var p = Process.Start(psi)!;
        p.StandardInput.Close();
        var o = p.StandardOutput.ReadToEndAsync();
        var e = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeoutMs))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"{exe} {string.Join(' ', args)} did not finish in {timeoutMs} ms");
        }
        p.WaitForExit();
        return new RunResult(p.ExitCode, o.Result, e.Result);
    }

    public static RunResult Bash(string script, int timeoutMs = 120_000) => Run("/bin/bash", new[] { "-c", script }, null, timeoutMs);

    public static RunResult Lab(params string[] args) => Run(Repo.Lab, args);
}

/// <summary>
/// A lab mount in a temp dir, served by a daemon this fixture started (`lab mount
/// --foreground`), so it owns the pid. Dispose always unmounts, stops that pid, and
/// removes the temp dirs, even when the test failed.
/// </summary>
public sealed class LabMount : IDisposable
{
    public readonly string Dir, Backing, Mount;
    public readonly Process Daemon;
    readonly StringBuilder _log = new();

    public LabMount(string vm = "freebsd", params string[] extraArgs) : this(0, vm, extraArgs) { }

    /// <param name="fdLimit">The RLIMIT_NOFILE (soft and hard) the daemon runs under; 0: this process's.</param>
    public LabMount(int fdLimit, string vm, params string[] extraArgs)
    {
        Dir = Directory.CreateTempSubdirectory("labtest-").FullName;
        Backing = Path.Combine(Dir, "backing");
        Mount = Path.Combine(Dir, "mnt");
        Directory.CreateDirectory(Backing);
        Directory.CreateDirectory(Mount);
        var psi = new ProcessStartInfo(fdLimit > 0 ? "/bin/bash" : Repo.Lab)
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        if (fdLimit > 0)
        {
            // exec: the daemon keeps bash's pid, so Daemon is still the process this fixture stops.
            psi.ArgumentList.Add("-c");
            psi.ArgumentList.Add($"ulimit -n {fdLimit} && exec \"$0\" \"$@\"");
            psi.ArgumentList.Add(Repo.Lab);
        }
        foreach (var a in new[] { "mount", "--foreground", "--vm", vm }.Concat(extraArgs).Concat(new[] { Backing, Mount }))
            psi.ArgumentList.Add(a);
        Daemon = Process.Start(psi)!;
        Daemon.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (_log) _log.AppendLine(e.Data); };
        Daemon.BeginErrorReadLine();
        var ready = Daemon.StandardOutput.ReadLineAsync();
        if (!ready.Wait(30_000) || ready.Result == null || !ready.Result.StartsWith("ready "))
        {
            var log = DaemonLog;
            Dispose();
            throw new InvalidOperationException("lab daemon did not become ready:\n" + log);
        }
    }

    public string DaemonLog { get { lock (_log) return _log.ToString(); } }

    public string M(string rel) => Path.Combine(Mount, rel);
    public string B(string rel) => Path.Combine(Backing, rel);

    /// <summary>`lab run --stats` of a program; returns its result and this run's counters.</summary>
    public (RunResult Result, Dictionary<string, long> Counters) RunCounted(params string[] argv)
    {
        var args = new List<string> { "run", "--mount", Mount, "--stats", "--" };
        args.AddRange(argv);
        var r = Sh.Run(Repo.Lab, args);
        return (r, ParseCounters(r.Stderr));
    }

    public RunResult Run(params string[] argv)
    {
        var args = new List<string> { "run", "--mount", Mount, "--" };
        args.AddRange(argv);
        return Sh.Run(Repo.Lab, args);
    }

    /// <summary>The `--stats` table: "  name   value" lines.</summary>
    public static Dictionary<string, long> ParseCounters(string text)
    {
        var d = new Dictionary<string, long>();
        foreach (var line in text.Split('\n'))
        {
            var parts = line.Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length == 2 && long.TryParse(parts[1], out long v)) d[parts[0]] = v;
        }
        return d;
    }

    public static long Get(Dictionary<string, long> c, string name) => c.TryGetValue(name, out var v) ? v : 0;

    [DllImport("libc", SetLastError = true)]
    static extern int kill(int pid, int sig);
    [DllImport("libc", SetLastError = true)]
    static extern int umount2(string target, int flags);

    public static void Signal(int pid, int sig) => kill(pid, sig);

    public void KillDaemon()
    {
        if (!Daemon.HasExited) kill(Daemon.Id, 9);
        Daemon.WaitForExit(10_000);
    }

    public void Dispose()
    {
        try
        {
            if (!Daemon.HasExited)
            {
                kill(Daemon.Id, 15);
                if (!Daemon.WaitForExit(20_000)) { kill(Daemon.Id, 9); Daemon.WaitForExit(10_000); }
            }
        }
        catch (InvalidOperationException) { }
        // A killed daemon leaves its mount behind: detach it so the temp dir can go.
        for (int i = 0; i < 3 && File.ReadAllText("/proc/self/mountinfo").Contains(" " + Mount + " "); i++)
            umount2(Mount, 2);
        try { Directory.Delete(Dir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        Daemon.Dispose();
    }
}
