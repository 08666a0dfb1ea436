using System.Diagnostics;
using System.Runtime.InteropServices;

namespace Lab.Tests;

/// <summary>The lab mount made by an unprivileged user, through fusermount3.</summary>
public sealed class PosixBatteryTests(ITestOutputHelper output)
{
    [DllImport("libc", SetLastError = true)]
    static extern int kill(int pid, int sig);

    static bool Listed(string mp) => File.ReadAllLines("/proc/self/mountinfo").Any(l => l.Split(' ')[4] == mp);

    static RunResult AsNobody(string script) =>
        Sh.Run("setpriv", new[] { "--reuid=65534", "--regid=65534", "--clear-groups", "/bin/sh", "-c", script });

    /// <summary>Copies the lab's build output (the apphost and its assemblies) to dest; returns the copy's `lab`.</summary>
    static string CopyBuild(string dest)
    {
        var src = Path.GetDirectoryName(Repo.Lab)!;
        foreach (var f in Directory.EnumerateFiles(src, "*", SearchOption.AllDirectories))
        {
            var to = Path.Combine(dest, Path.GetRelativePath(src, f));
            Directory.CreateDirectory(Path.GetDirectoryName(to)!);
            File.Copy(f, to);
        }
        return Path.Combine(dest, Path.GetFileName(Repo.Lab));
    }

    [KernelFact]
    public void An_unprivileged_user_mounts_through_fusermount3()
    {
        if (!File.Exists("/usr/bin/fusermount3") || !File.Exists("/usr/bin/setpriv") || !Environment.IsPrivilegedProcess) return;
        var dir = Directory.CreateTempSubdirectory("labuser-").FullName;
        var backing = Path.Combine(dir, "b");
        var mnt = Path.Combine(dir, "m");
        Directory.CreateDirectory(backing);
        Directory.CreateDirectory(mnt);
        File.WriteAllText(Path.Combine(backing, "x"), "hi");
        // The user runs a copy of the build: the checkout may sit where it cannot enter (a 0700 dir).
        var lab = CopyBuild(Path.Combine(dir, "bin"));
        Sh.Run("chown", new[] { "-R", "65534:65534", dir });
        Sh.Run("chmod", new[] { "755", dir });
        // fusermount3 opens /dev/fuse as the user: this machine's is 0600, so it is opened up for the
        // moment of the mount only, and put back in every case.
        var devMode = File.GetUnixFileMode("/dev/fuse");
        Process? daemon = null;
        try
        {
            File.SetUnixFileMode("/dev/fuse", devMode | UnixFileMode.OtherRead | UnixFileMode.OtherWrite);
            var psi = new ProcessStartInfo("setpriv") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            foreach (var a in new[] { "--reuid=65534", "--regid=65534", "--clear-groups", lab, "mount", "--foreground", backing, mnt })
                psi.ArgumentList.Add(a);
            psi.Environment["XDG_RUNTIME_DIR"] = dir;
            psi.Environment["HOME"] = dir;
            daemon = Process.Start(psi)!;
            var ready = daemon.StandardOutput.ReadLineAsync();
            bool up = ready.Wait(30_000) && ready.Result?.StartsWith("ready ") == true;
            File.SetUnixFileMode("/dev/fuse", devMode);
            if (!up)
            {
                kill(daemon.Id, 9);
                Assert.Fail("the unprivileged daemon did not become ready: " + daemon.StandardError.ReadToEnd());
            }

            var line = File.ReadAllLines("/proc/self/mountinfo").Single(l => l.Split(' ')[4] == mnt);
            output.WriteLine(line);
            Assert.Contains("user_id=65534", line);
            Assert.Contains("default_permissions", line);
            var r = AsNobody($"cat {mnt}/x && echo new > {mnt}/y && cat {mnt}/y && stat -c %u {mnt}/y");
            Assert.True(r.ExitCode == 0, r.ToString());
            Assert.Equal("hinew\n65534\n", r.Stdout);
            Assert.Equal("new\n", File.ReadAllText(Path.Combine(backing, "y")));
            // Without user_allow_other in /etc/fuse.conf the mount is its owner's alone: root is refused.
            if (!File.Exists("/etc/fuse.conf") || !File.ReadLines("/etc/fuse.conf").Any(l => l.Trim() == "user_allow_other"))
                Assert.ThrowsAny<UnauthorizedAccessException>(() => File.ReadAllText(Path.Combine(mnt, "x")));

            kill(daemon.Id, 15); // the daemon unmounts through fusermount3 -u
            Assert.True(daemon.WaitForExit(20_000));
            Assert.False(Listed(mnt));
        }
        finally
        {
            File.SetUnixFileMode("/dev/fuse", devMode);
            if (daemon != null && !daemon.HasExited) { kill(daemon.Id, 9); daemon.WaitForExit(10_000); }
            daemon?.Dispose();
            for (int i = 0; i < 3 && Listed(mnt); i++) Sh.Run("umount", new[] { "-l", mnt });
            try { Directory.Delete(dir, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }
}
