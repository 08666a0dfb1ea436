using System.Text.RegularExpressions;

namespace Lab.Tests;

/// <summary>
/// The shim's process model under `lab run`: processes that share the program's memory
/// (clone(CLONE_VM), vfork, posix_spawn), programs that drop privileges, programs the lab
/// cannot serve (another uid, no userfaultfd, statically linked).
/// </summary>
public sealed class ProcessModelTests(ITestOutputHelper output)
{
    static void WritePattern(string path, int len)
    {
        var b = new byte[len];
        for (int i = 0; i < len; i++) b[i] = (byte)(i * 7 + 3);
        File.WriteAllBytes(path, b);
    }

    /// <summary>
    /// clone(CLONE_VM) children share the shim's connection and lock; 300 of them, each killed
    /// with SIGKILL somewhere in a loop of lab mmaps, leave replies nobody reads and locks held
    /// by the dead. The parent must go on using lab memory (before the fix it ended with "the
    /// lab daemon went away", exit 70, in 5 runs of 5).
    /// </summary>
    [KernelFact]
    public void CloneVmChildrenKilledMidRequestLeaveTheParentServed()
    {
        using var m = new LabMount();
        WritePattern(m.M("pat"), 1 << 20);
        var (r, c) = m.RunCounted(Repo.Prog("clonevm"), "clone", m.M("pat"), "300");
        output.WriteLine(r.ToString());
        Assert.True(r.ExitCode == 0, r.ToString() + m.DaemonLog);
        Assert.Equal("ok clone 300\n", r.Stdout);
        Assert.DoesNotContain("went away", r.Stderr);
        // One process (the children share its memory and its connection), nothing lost.
        Assert.Equal(1, LabMount.Get(c, "processes"));
        Assert.Equal(0, LabMount.Get(c, "lookup_miss"));
        Assert.Equal(0, LabMount.Get(c, "internal_errors"));
    }

    /// <summary>vfork children (mapping lab memory before their exec) and posix_spawn
    /// (CLONE_VM|CLONE_VFORK): every exec'd child is a lab process of its own.</summary>
    [KernelTheory]
    [InlineData("vfork")]
    [InlineData("spawn")]
    public void VforkAndPosixSpawnChildrenAreServed(string mode)
    {
        using var m = new LabMount();
        var (r, c) = m.RunCounted(Repo.Prog("clonevm"), mode, "40");
        output.WriteLine(r.ToString());
        Assert.True(r.ExitCode == 0, r.ToString() + m.DaemonLog);
        Assert.Equal($"ok {mode} 40\n", r.Stdout);
        Assert.Equal(41, LabMount.Get(c, "processes"));   // the parent and its 40 exec'd children
        Assert.Equal(0, LabMount.Get(c, "lookup_miss"));
        Assert.Equal(0, LabMount.Get(c, "unserved_programs"));
    }

    /// <summary>
    /// setpriv's way of dropping root (keep capabilities, setresuid, capset in one thread,
    /// setresgid): glibc aborts if any thread it knows gets another result, and the shim's
    /// helper threads used to be such threads (SIGABRT, exit 134). Afterwards the process
    /// keeps its connection and uffd: lab memory still works.
    /// </summary>
    [KernelFact]
    public void ProgramThatDropsPrivilegesKeepsRunningUnderTheLab()
    {
        using var m = new LabMount();
        WritePattern(m.M("pat"), 1 << 20);
        var (r, c) = m.RunCounted(Repo.Prog("dropprivs"), m.M("pat"), "65534");
        output.WriteLine(r.ToString());
        Assert.True(r.ExitCode == 0, r.ToString() + m.DaemonLog);
        Assert.Equal("dropped to 65534, lab memory ok\n", r.Stdout);
        Assert.Equal(1, LabMount.Get(c, "processes"));
        // two 2 MiB heap blocks (before and after), touched page by page: zero-fill faults the lab served
        Assert.True(LabMount.Get(c, "v_zfod") >= 2 * 512, r.Stderr);
        Assert.Equal(0, LabMount.Get(c, "lookup_miss"));
    }

    /// <summary>
    /// A program exec'd as another user (setpriv, su, a daemon's worker) cannot be served: the
    /// daemon serves only its own user and root. It stops with one line naming the cause and
    /// the fix, exit 70, rather than run outside the lab (it used to abort with SIGABRT, or say
    /// "cannot connect ... Operation not permitted").
    /// </summary>
    [KernelFact]
    public void ProgramExecdAsAnotherUserStopsWithTheReason()
    {
        using var m = new LabMount();
        // uid 65534 must be able to read the shim, wherever the checkout is.
        var dir = Directory.CreateTempSubdirectory("labshim-").FullName;
        try
        {
            File.SetUnixFileMode(dir, (UnixFileMode)0b111_101_101);
            var shim = Path.Combine(dir, "liblabpreload.so");
            File.Copy(Repo.Shim, shim);
            File.SetUnixFileMode(shim, (UnixFileMode)0b110_100_100);
            var r = Sh.Run(Repo.Lab, new[] { "run", "--mount", m.Mount, "--", "setpriv", "--reuid=65534", "--regid=65534",
                "--clear-groups", "/bin/echo", "hi" }, new Dictionary<string, string> { ["LAB_PRELOAD"] = shim });
            output.WriteLine(r.ToString());
            Assert.Equal(70, r.ExitCode);
            Assert.Equal("", r.Stdout);
            Assert.Matches(new Regex(@"^lab: echo \(pid \d+\) cannot be served by the lab: it runs as uid 65534, and the lab daemon "
                + @"serves only uid 0 and root; stopping it rather than run it outside the lab \(run it as root\)\n$"), r.Stderr);
        }
        finally { Directory.Delete(dir, true); }
    }

    /// <summary>Root without CAP_SYS_PTRACE may not create a userfaultfd (unless the sysctl allows
    /// it): the line names userfaultfd, the sysctl and the fix, not "cannot connect".</summary>
    [KernelFact]
    public void ProgramWithoutUserfaultfdStopsWithTheReason()
    {
        using var m = new LabMount();
        var knob = File.ReadAllText("/proc/sys/vm/unprivileged_userfaultfd").Trim();
        var r = m.Run("setpriv", "--bounding-set", "-sys_ptrace", "/bin/echo", "hi");
        output.WriteLine(r.ToString());
        if (knob == "1")
        {
            // allowed for everyone: echo is served
            Assert.True(r.ExitCode == 0, r.ToString());
            Assert.Equal("hi\n", r.Stdout);
            return;
        }
        Assert.Equal(70, r.ExitCode);
        Assert.Equal("", r.Stdout);
        Assert.Matches(new Regex(@"^lab: echo \(pid \d+\) cannot be served by the lab: userfaultfd: Operation not permitted: it runs as "
            + @"uid 0 without CAP_SYS_PTRACE, and vm.unprivileged_userfaultfd is 0; stopping it rather than run it outside the lab "
            + @"\(run it as root with CAP_SYS_PTRACE, or set sysctl vm.unprivileged_userfaultfd=1\)\n$"), r.Stderr);
    }

    /// <summary>A statically linked program never loads the shim: `lab run` refuses it up front
    /// with one line (it used to run it outside the lab and print an empty table).</summary>
    [KernelFact]
    public void StaticProgramIsRefusedUpFront()
    {
        using var m = new LabMount();
        var prog = Repo.Prog("statichello");
        var r = m.Run(prog);
        output.WriteLine(r.ToString());
        Assert.Equal(1, r.ExitCode);
        Assert.Equal("", r.Stdout);
        Assert.Equal($"lab: {prog} is statically linked: the lab enters a program through the dynamic loader (LD_PRELOAD), "
            + "so it would run outside the lab; use a dynamically linked build\n", r.Stderr);
    }

    /// <summary>A static program exec'd later by a lab process runs outside the lab; the daemon
    /// sees the exec (the connection closes, the process lives on with a static image), logs it,
    /// and `lab run` says so and fails.</summary>
    [KernelFact]
    public void StaticProgramExecdLaterIsReported()
    {
        using var m = new LabMount();
        var prog = Repo.Prog("statichello");
        var (r, c) = m.RunCounted("/bin/sh", "-c", $"{prog} 300; echo done");
        output.WriteLine(r.ToString());
        Assert.Equal("static hello\ndone\n", r.Stdout);
        Assert.Equal(70, r.ExitCode);
        Assert.Equal(1, LabMount.Get(c, "unserved_programs"));
        Assert.EndsWith("lab: 1 program of this run was statically linked and ran outside the lab: "
            + "not served, not counted (the lab daemon's log names them)\n", r.Stderr);
        Assert.Contains($"exec'd {prog}, which is statically linked: it runs outside the lab", m.DaemonLog);
    }
}
