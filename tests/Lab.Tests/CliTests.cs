using System.Diagnostics;

namespace Lab.Tests;

/// <summary>
/// The `lab` command line (issue 12 items 5-7): every command given bad input prints one line
/// `lab: ...` on stderr, nothing on stdout, and exits non-zero (2 for a bad command line, 126/127
/// for a program that cannot start, as a shell); `lab unmount` refuses a busy mount; `lab run`
/// starts programs as a shell does; the swap store's counts are current.
/// </summary>
public sealed class CliTests(ITestOutputHelper output)
{
    [KernelFact]
    public void EveryCommandGivenBadInput_PrintsOneLineAndExitsNonZero()
    {
        using var m = new LabMount();
        string d = m.Dir, b = m.Backing, mnt = m.Mount;
        var text = Path.Combine(d, "text.txt");
        File.WriteAllText(text, "not a program, not a database\n");
        var mp2 = Directory.CreateDirectory(Path.Combine(d, "mp2")).FullName;
        var swapIn = Path.Combine(d, "nodir", "sub", "swap.db");
        const string Size = "is not a size (say 4096, 64K, 32M or 2G)";
        const string RunId = "is not a run id (the LAB_RUN_ID of a `lab run`, a number above 0)";
        foreach (var (args, exit, line) in new (string[], int, string)[]
        {
            ([], 2, "lab: lab needs a command: mount, unmount, run, stat, compare, swap (see lab --help)"),
            (["frob"], 2, "lab: Unrecognized command or argument 'frob'"),
            (["--frob"], 2, "lab: unknown option '--frob' (see lab --help)"),
            // mount
            (["mount"], 2, "lab: Required argument 'BACKING' missing for command: 'mount'"),
            (["mount", b], 2, "lab: Required argument 'MOUNTPOINT' missing for command: 'mount'"),
            (["mount", b, mp2, "extra"], 2, "lab: Unrecognized command or argument 'extra'"),
            (["mount", "--frob", b, mp2], 2, "lab: unknown option '--frob' (see lab mount --help)"),
            (["mount", "--vm", "bogus", b, mp2], 2, "lab: unknown --vm 'bogus'; choose one of: freebsd, dragonfly, uvm2000, uvm2019"),
            (["mount", "--threads", "x", b, mp2], 2, "lab: --threads: 'x' is not a whole number of 1 or more"),
            (["mount", "--threads", "0", b, mp2], 2, "lab: --threads: '0' is not a whole number of 1 or more"),
            (["mount", "--memory", "12Q", b, mp2], 2, $"lab: --memory: '12Q' {Size}"),
            (["mount", "--swap-max", "lots", b, mp2], 2, $"lab: --swap-max: 'lots' {Size}"),
            (["mount", "--swap-max", "1M", "--swap", "none", b, mp2], 1, "lab: --swap-max with --swap none: there is no swap store to limit"),
            (["mount", "--swap-max", "100", b, mp2], 1, "lab: --swap-max must be at least 4K (one page)"),
            (["mount", "--swap", "", b, mp2], 1, "lab: --swap: give a file, or 'none'"),
            (["mount", "--swap", swapIn, b, mp2], 1, $"lab: --swap {swapIn}: directory {Path.GetDirectoryName(swapIn)} does not exist"),
            (["mount", "--swap", text, b, mp2], 1, $"lab: {text}: not a swap store: SQLite Error 26: 'file is not a database'."),
            (["mount", Path.Combine(d, "nope"), mp2], 1, $"lab: backing directory {Path.Combine(d, "nope")} does not exist"),
            (["mount", b, Path.Combine(d, "nope")], 1, $"lab: mount point {Path.Combine(d, "nope")} does not exist"),
            (["mount", b, mnt], 1, $"lab: mount point {mnt} is already a mount point"),
            // unmount
            (["unmount"], 2, "lab: Required argument 'MOUNTPOINT' missing for command: 'unmount'"),
            (["unmount", "--frob", mnt], 2, "lab: unknown option '--frob' (see lab unmount --help)"),
            (["unmount", d], 1, $"lab: {d} is not a lab mount"),
            // run
            (["run"], 2, "lab: Required argument 'PROGRAM' missing for command: 'run'"),
            (["run", "--mount"], 2, "lab: Required argument missing for option: '--mount'"),
            (["run", "--mount", mnt, "--vm", "bogus", "--", "true"], 2, "lab: unknown --vm 'bogus'; choose one of: freebsd, dragonfly, uvm2000, uvm2019"),
            (["run", "--mount", mnt, "--resident-limit", "12Q", "--", "true"], 2, $"lab: --resident-limit: '12Q' {Size}"),
            (["run", "--mount", mnt, "--resident-limit", "4K", "--", "true"], 1, "lab: --resident-limit must be at least 256K"),
            (["run", "--mount", mnt, "--heap", "x", "--", "true"], 2, "lab: unknown --heap 'x'; choose lab or glibc"),
            (["run", "--mount", d, "--", "true"], 1, $"lab: {d} is not a lab mount"),
            (["run", "--mount", mnt, "--", "no-such-program-xyz"], 127, "lab: no-such-program-xyz: command not found"),
            (["run", "--mount", mnt, "--", Path.Combine(d, "missing")], 127, $"lab: {Path.Combine(d, "missing")}: No such file or directory"),
            (["run", "--mount", mnt, "--", text], 126, $"lab: {text}: Permission denied"),
            (["run", "--mount", mnt, "--", d], 126, $"lab: {d}: Is a directory"),
            // stat
            (["stat", "--mount", mnt, "--run", "abc"], 2, $"lab: --run: 'abc' {RunId}"),
            (["stat", "--mount", mnt, "--run", "-1"], 2, $"lab: --run: '-1' {RunId}"),
            (["stat", "--mount", mnt, "--run", "0"], 2, $"lab: --run: '0' {RunId}"),
            (["stat", "--mount", mnt, "--run", "12345"], 1, $"lab: no run 12345 on {mnt} (the daemon keeps the last 256 runs)"),
            (["stat", "--mount", d], 1, $"lab: {d} is not a lab mount"),
            (["stat", "--mount", mnt, "extra"], 2, "lab: Unrecognized command or argument 'extra'"),
            // compare
            (["compare", "--mount", mnt], 2, "lab: Required argument 'PROGRAM' missing for command: 'compare'"),
            (["compare", "--mount", mnt, "--vm", "freebsd", "--", "true"], 2, "lab: unknown option '--vm' (see lab compare --help)"),
            (["compare", "--mount", mnt, "--", "no-such-program-xyz"], 127, "lab: no-such-program-xyz: command not found"),
            // swap
            (["swap"], 2, "lab: lab swap needs a command: inspect (see lab swap --help)"),
            (["swap", "inspect"], 2, "lab: Required argument 'FILE' missing for command: 'inspect'"),
            (["swap", "inspect", "--frob", text], 2, "lab: unknown option '--frob' (see lab swap inspect --help)"),
            (["swap", "inspect", "--top", "x", text], 2, "lab: --top: 'x' is not a whole number of 0 or more"),
            (["swap", "inspect", "--top", "-1", text], 2, "lab: --top: '-1' is not a whole number of 0 or more"),
            (["swap", "inspect", Path.Combine(d, "none.db")], 1, $"lab: {Path.Combine(d, "none.db")}: no such file"),
            (["swap", "inspect", d], 1, $"lab: {d}: is a directory, not a swap store"),
            (["swap", "inspect", text], 1, $"lab: {text}: not a swap store: SQLite Error 26: 'file is not a database'."),
        })
        {
            var r = Sh.Lab(args);
            output.WriteLine($"lab {string.Join(' ', args)} -> {r}");
            Assert.True(r.ExitCode == exit && r.Stdout == "" && r.Stderr == line + "\n",
                $"lab {string.Join(' ', args)}: expected exit {exit} and the one line\n{line}\ngot {r}");
        }
        // The refused --swap made nothing, and no refused mount was made.
        Assert.False(Directory.Exists(Path.Combine(d, "nodir")));
        Assert.Equal(new[] { mnt }, global::Lab.Mounts.LabMounts().Where(p => p.StartsWith(d, StringComparison.Ordinal)));
    }

    [KernelFact]
    public void Run_PassesArgv0AsTyped_AndStartsProgramsAsAShellDoes()
    {
        using var m = new LabMount();
        // coreutils print their argv[0] in the usage line.
        var ls = m.Run("ls", "--help");
        Assert.True(ls.ExitCode == 0, ls.ToString());
        Assert.Equal("Usage: ls [OPTION]... [FILE]...", ls.Stdout.Split('\n')[0]);
        var cmdline = m.Run("/bin/sh", "-c", "tr '\\0' '\\n' < /proc/$$/cmdline | head -1");
        Assert.True(cmdline.ExitCode == 0, cmdline.ToString());
        Assert.Equal("/bin/sh\n", cmdline.Stdout);
        var sh = m.Run("sh", "-c", "tr '\\0' '\\n' < /proc/$$/cmdline | head -1");
        Assert.Equal("sh\n", sh.Stdout);
        // Every signal at its default (the runtime ignores SIGPIPE): `yes` dies of it quietly.
        var pipe = m.Run("/bin/sh", "-c", "yes | head -1; echo \"${PIPESTATUS:-done}\"");
        Assert.True(pipe.ExitCode == 0 && pipe.Stdout == "y\ndone\n" && pipe.Stderr == "", pipe.ToString());
        // A program killed by a signal: 128 + the signal, as a shell says.
        var killed = m.Run("/bin/sh", "-c", "kill -TERM $$");
        Assert.Equal(128 + 15, killed.ExitCode);
        var exit = m.Run("/bin/sh", "-c", "exit 3");
        Assert.Equal(3, exit.ExitCode);
    }

    [KernelFact]
    public void Unmount_OfABusyMount_RefusesWithThePids_UnlessForced()
    {
        using var m = new LabMount();
        File.WriteAllText(m.M("f.txt"), "open me\n");
        var started = new List<Process>();
        int labProgram = 0;
        try
        {
            // A process with its working directory in the mount, one with a file of it open,
            // and a lab program (its memory is served by the daemon, wherever its files are).
            var inCwd = Start("/bin/sleep", ["60"], cwd: m.Mount);
            started.Add(inCwd);
            var openFile = Start("/bin/sh", ["-c", $"exec /bin/sleep 60 < '{m.M("f.txt")}'"]);
            started.Add(openFile);
            var labRun = Start(Repo.Lab, ["run", "--mount", m.Mount, "--", "/bin/sleep", "60"]);
            started.Add(labRun);
            labProgram = WaitForChild(labRun.Id);
            var deadline = DateTime.UtcNow.AddSeconds(30);
            while (Stat(m, "processes_alive") != 1 && DateTime.UtcNow < deadline) Thread.Sleep(50);
            Assert.Equal(1, Stat(m, "processes_alive"));
            WaitFor(() => File.Exists($"/proc/{openFile.Id}/comm") && File.ReadAllText($"/proc/{openFile.Id}/comm") == "sleep\n");

            var users = new SortedDictionary<int, string>
            {
                [inCwd.Id] = "sleep: working directory",
                [openFile.Id] = "sleep: open file",
                [labProgram] = "sleep: lab program",
            };
            var expect = $"lab: {m.Mount} is busy: {string.Join(", ", users.Select(u => $"pid {u.Key} ({u.Value})"))}; stop them, or unmount with --force\n";
            var r = Sh.Lab("unmount", m.Mount);
            output.WriteLine(r.ToString());
            Assert.True(r.ExitCode == 1 && r.Stdout == "" && r.Stderr == expect, $"expected exit 1 and\n{expect}got {r}");
            // Nothing was stopped: the mount, the daemon and every program are still there.
            Assert.Contains(m.Mount, global::Lab.Mounts.LabMounts());
            Assert.False(m.Daemon.HasExited);
            Assert.All(started, p => Assert.False(p.HasExited));
            Assert.Equal("open me\n", File.ReadAllText(m.M("f.txt")));

            // One user left (the working directory): still refused, naming only it.
            Stop(openFile); Stop(labRun);
            LabMount.Signal(labProgram, 15);   // a child of the `lab run` this test started
            WaitFor(() => !Directory.Exists($"/proc/{labProgram}") || File.ReadAllText($"/proc/{labProgram}/stat").Contains(") Z "));
            WaitFor(() => Stat(m, "processes_alive") == 0);
            r = Sh.Lab("unmount", m.Mount);
            Assert.Equal($"lab: {m.Mount} is busy: pid {inCwd.Id} (sleep: working directory); stop them, or unmount with --force\n", r.Stderr);
            Assert.Equal(1, r.ExitCode);

            // --force unmounts anyway.
            r = Sh.Lab("unmount", "--force", m.Mount);
            Assert.True(r.ExitCode == 0 && r.Stdout == $"lab: unmounted {m.Mount}\n", r.ToString());
            Assert.DoesNotContain(m.Mount, global::Lab.Mounts.LabMounts());
            Assert.True(m.Daemon.WaitForExit(20_000));
        }
        finally
        {
            foreach (var p in started) { Stop(p); p.Dispose(); }
            if (labProgram > 0 && File.Exists($"/proc/{labProgram}/comm") && File.ReadAllText($"/proc/{labProgram}/comm") == "sleep\n")
                LabMount.Signal(labProgram, 9);
        }
    }

    [KernelFact]
    public void Unmount_OfAnIdleMount_Succeeds()
    {
        using var m = new LabMount();
        Assert.True(m.Run("/bin/true").ExitCode == 0);
        WaitFor(() => Stat(m, "processes_alive") == 0);
        var r = Sh.Lab("unmount", m.Mount);
        Assert.True(r.ExitCode == 0 && r.Stdout == $"lab: unmounted {m.Mount}\n" && r.Stderr == "", r.ToString());
    }

    /// <summary>
    /// `swap_slots_used` is the slots holding a page now, and `lab swap inspect` on the live store
    /// agrees with it: while a program's pages are out, and once it has ended (its slots freed at
    /// once in the file, not at the store's next write, which may never come).
    /// </summary>
    [KernelFact]
    public void SwapSlotsUsed_IsCurrent_AndInspectShowsFreedSlotsFreeAtOnce()
    {
        var swap = Path.Combine(Path.GetTempPath(), $"labswap-{Guid.NewGuid():N}.db");
        var m = new LabMount("freebsd", "--swap", swap);
        Process? p = null, keeper = null;
        int keeperChild = 0;
        try
        {
            // A lab program that stays: the daemon is never idle, so its idle trim (which commits
            // the store's pending deletes too) cannot stand in for the fix.
            keeper = Start(Repo.Lab, ["run", "--mount", m.Mount, "--", "/bin/sleep", "300"]);
            keeperChild = WaitForChild(keeper.Id);
            var psi = new ProcessStartInfo(Repo.Lab)
            {
                RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false,
            };
            foreach (var a in new[] { "run", "--mount", m.Mount, "--resident-limit", "1M", "--stats", "--", Repo.Prog("swapcheck"), "1000", "check" })
                psi.ArgumentList.Add(a);
            psi.Environment["LAB_PRELOAD"] = Repo.Shim;
            p = Process.Start(psi)!;
            var err = p.StandardError.ReadToEndAsync();
            var filled = p.StandardOutput.ReadLineAsync();
            Assert.True(filled.Wait(60_000) && filled.Result == "filled", "swapcheck did not fill its pages");
            // The pageout brings ~4 MiB under the 1 MiB limit; then stats and the file agree. Fewer
            // than the 1,024 frees after which the store commits them itself, so only the fix commits them.
            long used = 0, inFile = -1;
            var deadline = DateTime.UtcNow.AddSeconds(60);
            while (DateTime.UtcNow < deadline)
            {
                used = Stat(m, "swap_slots_used");
                inFile = UsedInFile(swap);
                if (used >= 500 && used == inFile && used == Stat(m, "swap_slots_in_use")) break;
                Thread.Sleep(100);
            }
            output.WriteLine($"paged out: stats {used}, file {inFile}");
            Assert.True(used >= 500 && used == inFile, $"swap_slots_used {used}, inspect {inFile}");
            p.StandardInput.WriteLine("check");
            p.StandardInput.Flush();
            Assert.Equal("checked 1000 sigbus 0 bad 0", p.StandardOutput.ReadLine());
            Assert.True(p.WaitForExit(60_000));
            Assert.True(p.ExitCode == 0, err.Result);
            long pageouts = LabMount.Get(LabMount.ParseCounters(err.Result), "pageouts");
            Assert.True(pageouts >= used, $"pageouts {pageouts}");
            // The program's objects die with it: no slot is in use, and the file says so at once
            // (the store has no later write to carry the deletes; only the idle trim, 5 s on, would).
            var exited = Stopwatch.StartNew();
            WaitFor(() => Stat(m, "swap_slots_in_use") == 0);
            Assert.Equal(0, Stat(m, "swap_slots_used"));
            Assert.Equal(1, Stat(m, "processes_alive"));   // the keeper: no idle trim
            output.WriteLine($"slots free {exited.ElapsedMilliseconds} ms after the exit");
            var sw = Stopwatch.StartNew();
            while (UsedInFile(swap) != 0 && sw.ElapsedMilliseconds < 10_000) Thread.Sleep(20);
            output.WriteLine($"file caught up after {sw.ElapsedMilliseconds} ms");
            var inspect = Sh.Lab("swap", "inspect", swap);
            Assert.True(inspect.ExitCode == 0, inspect.ToString());
            Assert.Contains("\n  slots: 0 used, ", inspect.Stdout);
        }
        finally
        {
            if (p != null) { Stop(p); p.Dispose(); }
            if (keeper != null) { Stop(keeper); keeper.Dispose(); }
            if (keeperChild > 0 && File.Exists($"/proc/{keeperChild}/comm") && File.ReadAllText($"/proc/{keeperChild}/comm") == "sleep\n")
                LabMount.Signal(keeperChild, 9);
            m.Dispose();
            foreach (var f in new[] { swap, swap + "-wal", swap + "-shm", swap + "-lock" }) File.Delete(f);
        }
    }

    static long UsedInFile(string swap)
    {
        var r = Sh.Lab("swap", "inspect", "--top", "0", swap);
        var line = r.Stdout.Split('\n').FirstOrDefault(l => l.StartsWith("  slots: ", StringComparison.Ordinal));
        return line == null ? -1 : long.Parse(line["  slots: ".Length..].Split(' ')[0]);
    }

    static long Stat(LabMount m, string name) =>
        LabMount.Get(LabMount.ParseCounters(Sh.Lab("stat", "--mount", m.Mount, "--raw").Stdout), name);

    static Process Start(string exe, string[] args, string? cwd = null)
    {
        var psi = new ProcessStartInfo(exe) { UseShellExecute = false, RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
        if (cwd != null) psi.WorkingDirectory = cwd;
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["LAB_PRELOAD"] = Repo.Shim;
        return Process.Start(psi)!;
    }

    /// <summary>Ends a process this test started, by its pid.</summary>
    static void Stop(Process p)
    {
        try
        {
            if (p.HasExited) return;
            LabMount.Signal(p.Id, 15);
            if (!p.WaitForExit(10_000)) { LabMount.Signal(p.Id, 9); p.WaitForExit(10_000); }
        }
        catch (InvalidOperationException) { }
    }

    /// <summary>The pid of the (first) child of <paramref name="pid"/>.</summary>
    static int WaitForChild(int pid)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (DateTime.UtcNow < deadline)
        {
            foreach (var task in Directory.EnumerateDirectories($"/proc/{pid}/task"))
            {
                var kids = File.ReadAllText(Path.Combine(task, "children")).Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (kids.Length > 0) return int.Parse(kids[0]);
            }
            Thread.Sleep(20);
        }
        throw new TimeoutException($"pid {pid} started no child");
    }

    static void WaitFor(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException("the condition did not come true in 30 s");
            Thread.Sleep(20);
        }
    }
}
