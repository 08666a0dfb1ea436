using System.Diagnostics;
using System.Text;
using Lab.Fusefs;
using Xunit;

namespace Lab.Tests.Fusefs;

/// <summary>Whether this machine can mount FUSE here (a /dev/fuse and root). With LAB_REQUIRE_KERNEL=1
/// a missing kernel makes the tests fail instead of skipping.</summary>
internal static class Kernel
{
    public static readonly bool Required = Environment.GetEnvironmentVariable("LAB_REQUIRE_KERNEL") == "1";

    public static string? Missing =>
        !File.Exists("/dev/fuse") ? "/dev/fuse is missing"
        : !Environment.IsPrivilegedProcess ? "mounting FUSE with mount(2) needs root"
        : null;

    public static void Require()
    {
        if (Missing is { } why) throw new InvalidOperationException($"LAB_REQUIRE_KERNEL=1 but {why}");
    }
}

/// <summary>A fact that needs a kernel FUSE mount: skipped with the reason when the machine cannot
/// mount, unless LAB_REQUIRE_KERNEL=1, where it runs and fails.</summary>
public sealed class KernelFactAttribute : FactAttribute
{
    public KernelFactAttribute()
    {
        if (Kernel.Missing is { } why && !Kernel.Required)
            Skip = $"needs a kernel FUSE mount: {why} (set LAB_REQUIRE_KERNEL=1 to make this a failure)";
    }
}

/// <summary>A .lab tree held as directory → entries; a file exists when its directory lists it, and its
/// content carries a render counter, so every open sees new content.</summary>
internal sealed class FakeLab : ILabDirectory
{
    public string ControlSocketPath { get; set; } = "/run/lab/control.sock";
    public readonly System.Collections.Concurrent.ConcurrentDictionary<string, string[]> Dirs = new() { [""] = ["stats", "maps"] };
    public int Renders;
    /// <summary>Runs after each render with its path (e.g. to make a process exit once it was read).</summary>
    public Action<string>? Rendered;

    public IReadOnlyList<string>? List(string dir) => Dirs.TryGetValue(dir, out var e) ? e : null;

    public byte[]? Render(string path)
    {
        int slash = path.LastIndexOf('/');
        if (List(slash < 0 ? "" : path[..slash]) is not { } entries || !entries.Contains(path[(slash + 1)..])) return null;
        int r = Interlocked.Increment(ref Renders);
        var bytes = Encoding.UTF8.GetBytes($"{path}: v_vm_faults 42\nrender {r}\n");
        Rendered?.Invoke(path);
        return bytes;
    }
}

/// <summary>A LabFileSystem over a temp backing dir, mounted at a temp mount point in this process.
/// Dispose unmounts and removes both directories, also after a failure.</summary>
internal sealed class TestMount : IDisposable
{
    public string Root { get; }
    public string Backing { get; }
    public string MountPoint { get; }
    public LabFileSystem Fs { get; }
    public FuseServer Server { get; }
    public FakeLab Lab { get; }

    public TestMount(bool start = true, int threads = 4, int maxNodeFds = 0)
    {
        Kernel.Require();
        Root = Path.Combine(Path.GetTempPath(), "fusefs-test-" + Guid.NewGuid().ToString("N")[..12]);
        Backing = Path.Combine(Root, "backing");
        MountPoint = Path.Combine(Root, "mnt");
        Directory.CreateDirectory(Backing);
        Directory.CreateDirectory(MountPoint);
        Lab = new FakeLab();
        Fs = new LabFileSystem(Backing, Lab, maxNodeFds);
        try
        {
            Server = FuseServer.Mount(MountPoint, Fs);
            if (start) Server.Start(threads);
        }
        catch
        {
            Server?.Dispose();
            Fs.Dispose();
            RemoveDirs();
            throw;
        }
    }

    public string M(string rel) => Path.Combine(MountPoint, rel);
    public string B(string rel) => Path.Combine(Backing, rel);

    public void Dispose()
    {
        try { Server.Dispose(); }
        finally
        {
            Fs.Dispose();
            RemoveDirs();
        }
    }

    private void RemoveDirs()
    {
        // The mount point is removed non-recursively: if the unmount failed, never walk into a mount.
        try { Directory.Delete(MountPoint, false); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        try { Directory.Delete(Backing, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        try { Directory.Delete(Root, false); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}

internal static class Sh
{
    public sealed record Result(int Exit, string Out, string Err);

    /// <summary>Runs bash -c in <paramref name="cwd"/>; the process is killed (by its own pid) after 120 s.</summary>
    public static Result Run(string script, string cwd)
    {
        var psi = new ProcessStartInfo("/bin/bash") { WorkingDirectory = cwd, RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add(script);
        psi.Environment["LC_ALL"] = "C";
        psi.Environment["GIT_AUTHOR_NAME"] = psi.Environment["GIT_COMMITTER_NAME"] = "lab";
        psi.Environment["GIT_AUTHOR_EMAIL"] = psi.Environment["GIT_COMMITTER_EMAIL"] = "lab@example.invalid";
        psi.Environment["HOME"] = cwd;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(120_000))
        {
            p.Kill(true);
            throw new TimeoutException($"`{script}` did not finish");
        }
        return new Result(p.ExitCode, stdout.Result, stderr.Result);
    }

    public static string Ok(string script, string cwd)
    {
        var r = Run(script, cwd);
        Assert.True(r.Exit == 0, $"`{script}` exited {r.Exit}: {r.Err}{r.Out}");
        return r.Out;
    }
}

/// <summary>Small file helpers the cache tests share.</summary>
internal static class TestFiles
{
    /// <summary>The inode number of <paramref name="path"/> (the node id the lab's cache is keyed by).</summary>
    public static ulong Ino(string path)
    {
        Assert.Equal(0, Mono.Unix.Native.Syscall.stat(path, out var st));
        return st.st_ino;
    }

    /// <summary><paramref name="n"/> random bytes, the same for the same seed.</summary>
    public static byte[] Pattern(int n, int seed)
    {
        var b = new byte[n];
        new Random(seed).NextBytes(b);
        return b;
    }
}
