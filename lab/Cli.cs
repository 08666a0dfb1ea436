using System.CommandLine;
using System.Diagnostics;
using Lab.Daemon;
using Lab.Fusefs;
using Lab.Linux;
using Lab.Vm;

namespace Lab;

/// <summary>The `lab` command line. Bad input: one line on stderr, a non-zero exit.</summary>
public static class Cli
{
    public static int Run(string[] args)
    {
        var root = new RootCommand("the lab: an mmap laboratory — BSD fault handlers serving real programs' page faults");
        root.Add(MountCommand());
        root.Add(UnmountCommand());
        root.Add(RunCommand());
        root.Add(StatCommand());
        root.Add(CompareCommand());
        root.Add(SwapCommand());
        var parse = root.Parse(args);
        // A parse error is one line and exit 2 (usage), never the help text: the parser's default
        // action prints the whole help before its message.
        var unknown = UnknownOption(parse);
        if (parse.Errors.Count > 0 || unknown != null)
        {
            // "Required command was not provided" comes first even when an unknown word explains it.
            var cmd = parse.CommandResult.Command;
            var path = CommandPath(parse.CommandResult);
            var error = parse.Errors.FirstOrDefault(e => !IsMissingCommand(e)) ?? parse.Errors.FirstOrDefault();
            if (error != null && IsMissingCommand(error) && cmd.Subcommands.Count > 0)
                Console.Error.WriteLine($"lab: {path} needs a command: {string.Join(", ", cmd.Subcommands.Select(c => c.Name))} (see {path} --help)");
            else if (unknown != null)
                Console.Error.WriteLine($"lab: unknown option '{unknown}' (see {path} --help)");
            else Console.Error.WriteLine($"lab: {OneLine(error!.Message)}");
            return 2;
        }
        try
        {
            return parse.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
        }
        catch (ExitException e)
        {
            Console.Error.WriteLine($"lab: {e.Message}");
            return e.ExitCode;
        }
        catch (Exception e) when (e is LabException or FuseMountException or Lab.Swapstore.SwapStoreException)
        {
            Console.Error.WriteLine($"lab: {e.Message}");
            return 1;
        }
    }

    /// <summary>"lab", "lab swap inspect": the command line up to the command the parser reached.</summary>
    static string CommandPath(System.CommandLine.Parsing.CommandResult c)
    {
        var names = new List<string>();
        for (System.CommandLine.Parsing.SymbolResult? r = c; r is System.CommandLine.Parsing.CommandResult cr; r = cr.Parent)
            names.Insert(0, cr.Command.Name);
        names[0] = "lab";
        return string.Join(' ', names);
    }

    /// <summary>
    /// An unknown option the parser took for an argument: it then complains about the next word, or
    /// (before PROGRAM of run and compare) runs a program named "--vm". One before a "--", or any
    /// when the parse failed, is an option; without "--", only PROGRAM itself can be one.
    /// </summary>
    static string? UnknownOption(ParseResult parse)
    {
        static bool Looks(System.CommandLine.Parsing.Token t) => t.Value.Length > 2 && t.Value.StartsWith("--", StringComparison.Ordinal);
        var args = parse.Tokens.TakeWhile(t => t.Type != System.CommandLine.Parsing.TokenType.DoubleDash)
            .Where(t => t.Type == System.CommandLine.Parsing.TokenType.Argument).ToList();
        bool dashDash = parse.Tokens.Any(t => t.Type == System.CommandLine.Parsing.TokenType.DoubleDash);
        if (parse.Errors.Count > 0 || dashDash) return args.FirstOrDefault(Looks)?.Value;
        var program = parse.CommandResult.Children.OfType<System.CommandLine.Parsing.ArgumentResult>()
            .FirstOrDefault(a => a.Argument.Name == "PROGRAM")?.Tokens.FirstOrDefault();
        return program != null && Looks(program) ? program.Value : null;
    }

    static bool IsMissingCommand(System.CommandLine.Parsing.ParseError e) => e.Message.StartsWith("Required command was not provided", StringComparison.Ordinal);

    /// <summary>A parser message as one line, without a trailing period; "lab" (the root command's
    /// name in its messages) said as a command line.</summary>
    static string OneLine(string message)
    {
        var line = message.ReplaceLineEndings(" ").Trim().TrimEnd('.');
        return line.Length == 0 ? "bad command line (see lab --help)" : line;
    }

    /// <summary>An int option that refuses a non-number with its name in one line (the parser's own
    /// message names a .NET type).</summary>
    static Option<int> IntOption(string name, string description, int min, int defaultValue) => new(name)
    {
        Description = description,
        DefaultValueFactory = _ => defaultValue,
        CustomParser = r =>
        {
            var v = r.Tokens.Count > 0 ? r.Tokens[0].Value : "";
            if (int.TryParse(v, System.Globalization.NumberStyles.AllowLeadingSign, System.Globalization.CultureInfo.InvariantCulture, out int n) && n >= min) return n;
            r.AddError($"{name}: '{v}' is not a whole number of {min} or more");
            return defaultValue;
        },
    };

    static Option<string> VmOption(string description) => new("--vm")
    {
        Description = description + " (" + string.Join(", ", Resolvers.Names) + ")",
        CustomParser = r =>
        {
            var v = r.Tokens.Count > 0 ? r.Tokens[0].Value : "";
            if (!Resolvers.Names.Contains(v)) r.AddError($"unknown --vm '{v}'; choose one of: {string.Join(", ", Resolvers.Names)}");
            return v;
        },
    };

    static Option<string> HeapOption() => new("--heap")
    {
        Description = "where the program's malloc blocks live: lab (every block is lab memory: the Debian jemalloc "
            + "is preloaded before the shim and takes its memory from lab mmaps) or glibc (glibc's allocator; only "
            + "blocks of 1 MiB or more are lab memory)",
        DefaultValueFactory = _ => "lab",
        CustomParser = r =>
        {
            var v = r.Tokens.Count > 0 ? r.Tokens[0].Value : "";
            if (v is not ("lab" or "glibc")) r.AddError($"unknown --heap '{v}'; choose lab or glibc");
            return v;
        },
    };

    /// <summary>A size option: bytes, or a number with K, M, G (powers of 1024; KiB/MiB/GiB accepted too).</summary>
    static Option<long> SizeOption(string name, string description) => new(name)
    {
        Description = description + " (e.g. 32M, 1G)",
        CustomParser = r =>
        {
            var v = r.Tokens.Count > 0 ? r.Tokens[0].Value : "";
            if (ParseSize(v) is long n) return n;
            r.AddError($"{name}: '{v}' is not a size (say 4096, 64K, 32M or 2G)");
            return 0;
        },
    };

    public static long? ParseSize(string s)
    {
        s = s.Trim();
        long mult = 1;
        string num = s;
        foreach (var (suffix, m) in new (string, long)[] { ("KiB", 1L << 10), ("MiB", 1L << 20), ("GiB", 1L << 30), ("K", 1L << 10), ("M", 1L << 20), ("G", 1L << 30) })
            if (s.EndsWith(suffix, StringComparison.OrdinalIgnoreCase)) { mult = m; num = s[..^suffix.Length]; break; }
        if (!long.TryParse(num, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long v)) return null;
        if (v > long.MaxValue / mult / 2) return null;
        return v * mult;
    }

    static Command MountCommand()
    {
        var backing = new Argument<string>("BACKING") { Description = "the directory whose files the mount shows" };
        var mountpoint = new Argument<string>("MOUNTPOINT") { Description = "an empty directory to mount on" };
        var vm = VmOption("default fault handler design for programs on this mount");
        vm.DefaultValueFactory = _ => "freebsd";
        var foreground = new Option<bool>("--foreground") { Description = "run the daemon in this process (logs on stderr)" };
        var threads = IntOption("--threads", "FUSE request threads", min: 1, defaultValue: 2);
        var log = new Option<string>("--log") { Description = "with --foreground: once mounted, send the daemon's messages to this file", Hidden = true };
        var memory = SizeOption("--memory", "resident limit for all the mount's programs together; the pageout keeps them under it");
        var swap = new Option<string>("--swap") { Description = "the swap store file (SQLite; emptied at start, kept at exit); 'none' for no swap. Default: a temporary one, removed at exit" };
        var swapMax = SizeOption("--swap-max", "most the swap store may hold");
        var cmd = new Command("mount", "mount the lab file system and start its daemon") { backing, mountpoint, vm, foreground, threads, log, memory, swap, swapMax };
        cmd.SetAction(r =>
        {
            string b = Path.GetFullPath(r.GetValue(backing)!), m = Path.GetFullPath(r.GetValue(mountpoint)!);
            if (!Directory.Exists(b)) throw new LabException($"backing directory {b} does not exist");
            // A mount left by a killed daemon answers every stat with ENOTCONN: clear it first.
            if (FuseServer.ClearStale(m)) Console.Error.WriteLine($"lab: cleared a stale mount at {m}");
            if (!Directory.Exists(m)) throw new LabException($"mount point {m} does not exist");
            var sw = r.GetValue(swap);
            if (sw == "") throw new LabException("--swap: give a file, or 'none'");
            if (sw == "none" && r.GetResult(swapMax) != null)
                throw new LabException("--swap-max with --swap none: there is no swap store to limit");
            if (r.GetResult(swapMax) != null && r.GetValue(swapMax) < 4096) throw new LabException("--swap-max must be at least 4K (one page)");
            if (sw != null && sw != "none") sw = Path.GetFullPath(sw);
            var opts = new DaemonOptions { MemoryBytes = r.GetValue(memory), SwapPath = sw, SwapMaxBytes = r.GetValue(swapMax) };
            if (r.GetValue(foreground)) return Foreground(b, m, r.GetValue(vm)!, r.GetValue(threads), r.GetValue(log), opts);
            return Background(b, m, r.GetValue(vm)!, r.GetValue(threads), opts);
        });
        return cmd;
    }

    static int Foreground(string backing, string mountpoint, string vm, int threads, string? log, DaemonOptions opts)
    {
        using var daemon = new LabDaemon(backing, mountpoint, vm, opts);
        return daemon.Run(threads, () =>
        {
            Console.Out.WriteLine($"ready {Environment.ProcessId}");
            Console.Out.Flush();
            if (log != null) Native.RedirectOutput(log);
        });
    }

    /// <summary>Start the daemon as a detached child and return once the mount answers.</summary>
    static int Background(string backing, string mountpoint, string vm, int threads, DaemonOptions opts)
    {
        var log = Path.Combine(LabDaemon.SocketDirectory, $"mount-{Math.Abs(mountpoint.GetHashCode()):x}.log");
        Directory.CreateDirectory(LabDaemon.SocketDirectory);
        var psi = new ProcessStartInfo("setsid")
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false,
        };
        // setsid: the daemon outlives this command and the terminal's Ctrl-C.
        foreach (var a in new[] { Environment.ProcessPath!, "mount", "--foreground", "--log", log, "--vm", vm, "--threads", threads.ToString(), backing, mountpoint })
            psi.ArgumentList.Add(a);
        if (opts.MemoryBytes > 0) { psi.ArgumentList.Add("--memory"); psi.ArgumentList.Add(opts.MemoryBytes.ToString()); }
        if (opts.SwapPath != null) { psi.ArgumentList.Add("--swap"); psi.ArgumentList.Add(opts.SwapPath); }
        if (opts.SwapMaxBytes > 0) { psi.ArgumentList.Add("--swap-max"); psi.ArgumentList.Add(opts.SwapMaxBytes.ToString()); }
        var p = Process.Start(psi)!;
        var errors = p.StandardError.ReadToEndAsync();
        var line = p.StandardOutput.ReadLine();
        if (line == null || !line.StartsWith("ready "))
        {
            p.WaitForExit();
            var err = errors.Result.Trim().Split('\n').LastOrDefault(l => l.Length > 0) ?? "the daemon exited";
            Console.Error.WriteLine(err.StartsWith("lab: ") ? err : "lab: " + err);
            return 1;
        }
        Console.Out.WriteLine($"lab: mounted {backing} on {mountpoint} (daemon pid {line[6..]}, vm {vm}, log {log})");
        return 0;
    }

    static Command UnmountCommand()
    {
        var mountpoint = new Argument<string>("MOUNTPOINT");
        var force = new Option<bool>("--force") { Description = "unmount even while programs use the mount: its lab programs are stopped, open files and working directories in it fail with ENOTCONN" };
        var cmd = new Command("unmount", "write dirty pages back, unmount, and stop the daemon (refused while the mount is in use, unless --force)") { mountpoint, force };
        cmd.SetAction(r =>
        {
            var m = Path.GetFullPath(r.GetValue(mountpoint)!).TrimEnd('/');
            if (m.Length == 0) m = "/";
            if (!Mounts.IsLabMount(m)) throw new LabException($"{m} is not a lab mount");
            var conn = ControlClient.TryConnect(Path.Combine(m, ".lab", "control"), out _);
            if (conn == null)
            {
                // The daemon is gone (killed): what is left is a dead mount; clear it.
                FuseServer.ClearStale(m);
                Console.Out.WriteLine($"lab: cleared a stale lab mount at {m}");
                return 0;
            }
            int pid;
            using (conn) pid = conn.DaemonPid;
            if (!r.GetValue(force) && MountUsers.Find(m, pid) is { Count: > 0 } users)
                throw new LabException($"{m} is busy: {MountUsers.Describe(users)}; stop them, or unmount with --force");
            Native.Kill(pid, 15);
            var deadline = DateTime.UtcNow.AddSeconds(60);
            while (Mounts.IsLabMount(m))
            {
                if (DateTime.UtcNow > deadline) throw new LabException($"the daemon (pid {pid}) did not unmount {m} within 60 s");
                Thread.Sleep(20);
            }
            Console.Out.WriteLine($"lab: unmounted {m}");
            return 0;
        });
        return cmd;
    }

    static Option<string> MountOption() => new("--mount") { Description = "the lab mount (default: $LAB_MOUNT, or the only lab mount)" };

    static string FindMount(string? given)
    {
        given ??= Environment.GetEnvironmentVariable("LAB_MOUNT");
        if (given != null)
        {
            var m = Path.GetFullPath(given);
            if (!Mounts.IsLabMount(m)) throw new LabException($"{m} is not a lab mount");
            return m;
        }
        var all = Mounts.LabMounts();
        return all.Count switch
        {
            0 => throw new LabException("no lab mount found; start one with `lab mount BACKING MOUNTPOINT`"),
            1 => all[0],
            _ => throw new LabException($"several lab mounts ({string.Join(", ", all)}); choose one with --mount"),
        };
    }

    static ControlClient ConnectDaemon(string mount, out string socket)
    {
        var link = Path.Combine(mount, ".lab", "control");
        socket = new FileInfo(link).LinkTarget ?? link;
        return ControlClient.TryConnect(link, out int e)
            ?? throw new LabException($"the lab daemon for {mount} is not running ({Errno.StrError(e)})");
    }

    static Command RunCommand()
    {
        var mount = MountOption();
        var vm = VmOption("fault handler design for this program");
        var stats = new Option<bool>("--stats") { Description = "print this run's counters on stderr when the program ends" };
        var limit = SizeOption("--resident-limit", "most lab memory the program (with its children) keeps resident; the rest is paged out");
        var heap = HeapOption();
        var program = new Argument<string[]>("PROGRAM") { Description = "the program and its arguments (after --)", Arity = ArgumentArity.OneOrMore };
        var cmd = new Command("run", "run an unmodified program with its lab memory served by the lab") { mount, vm, stats, limit, heap, program };
        cmd.SetAction(r =>
        {
            var m = FindMount(r.GetValue(mount));
            using var conn = ConnectDaemon(m, out var socket);
            long bytes = r.GetValue(limit);
            if (r.GetResult(limit) != null && bytes < 64 * 4096) throw new LabException("--resident-limit must be at least 256K");
            var prog = LabProgram(m, socket, r.GetValue(program)!, r.GetValue(vm), r.GetValue(heap)!);
            ulong run = prog.Run;
            if (bytes > 0) SetLimit(conn, run, bytes);
            var before = KernelFaults.OfReapedChildren();
            // Ctrl-C reaches the program through the terminal; the lab command just waits for it.
            using var sigint = System.Runtime.InteropServices.PosixSignalRegistration.Create(
                System.Runtime.InteropServices.PosixSignal.SIGINT, c => c.Cancel = true);
            var child = Start(prog, capture: false);
            int exit = child.Wait();
            // The counters tell whether a program of the run ran outside the lab. A daemon that
            // went away cannot say: the program has been stopped with its own message then.
            string? text = null;
            try { text = conn.Stat(run); }
            catch (LabException) when (!r.GetValue(stats)) { }
            if (r.GetValue(stats)) Console.Error.Write(Table((KernelFaults.OfReapedChildren() - before).WithCoverage(text!)));
            if (text != null && Unserved(text) is long n and > 0)
            {
                // The shim cannot enter a static program its program exec'd: the run is incomplete.
                Console.Error.WriteLine($"lab: {n} program{(n == 1 ? "" : "s")} of this run {(n == 1 ? "was" : "were")} statically linked and ran outside the lab: "
                    + "not served, not counted (the lab daemon's log names them)");
                return exit != 0 ? exit : 70;
            }
            return exit;
        });
        return cmd;
    }

    /// <summary>A program to start under the lab: the file to execute, its argv as typed, the environment to add.</summary>
    sealed record LabStart(string Exe, string[] Argv, Dictionary<string, string> Env, ulong Run);

    /// <summary>How to start PROGRAM under the lab: the shim preloaded, the daemon's socket, a fresh run id.</summary>
    static LabStart LabProgram(string mount, string socket, string[] argv, string? vm, string heap)
    {
        var exe = ResolveProgram(argv[0]);
        RefuseStatic(exe);
        var shim = FindShim();
        // The allocator goes first: its malloc family then wins over the shim's, and its own mmap
        // calls bind to the shim's mmap, so every block it hands out sits in lab anonymous memory.
        if (heap == "lab") shim = FindAllocator() + ":" + shim;
        ulong run = (ulong)Random.Shared.NextInt64(1, long.MaxValue);
        var env = new Dictionary<string, string>
        {
            ["LAB_CONTROL"] = socket,
            ["LAB_MOUNT"] = mount,
            ["LAB_RUN_ID"] = run.ToString(),
        };
        if (!string.IsNullOrEmpty(vm)) env["LAB_VM"] = vm;
        var pre = Environment.GetEnvironmentVariable("LD_PRELOAD");
        env["LD_PRELOAD"] = string.IsNullOrEmpty(pre) ? shim : shim + ":" + pre;
        return new LabStart(exe, argv, env, run);
    }

    /// <summary>The shim enters a program through the dynamic loader (LD_PRELOAD): a statically
    /// linked program, or a script whose interpreter is one, would run outside the lab.</summary>
    static void RefuseStatic(string exe)
    {
        var path = exe;
        for (int depth = 0; depth < 4; depth++)
        {
            if (Elf.ScriptInterpreter(path) is string interp) { path = interp; continue; }
            if (Elf.IsStatic(path) != true) return;
            var what = path == exe ? exe : $"{exe} runs {path}, which";
            throw new LabException($"{what} is statically linked: the lab enters a program through the dynamic loader (LD_PRELOAD), "
                + "so it would run outside the lab; use a dynamically linked build");
        }
    }

    static long? Unserved(string statsText) =>
        ParseStats(statsText).TryGetValue("unserved_programs", out var v) && long.TryParse(v, out var n) ? n : null;

    /// <summary>Starts the program with argv[0] as the user typed it. A start that fails exits as a
    /// shell's would: 127 for a missing file, 126 for one that cannot be executed.</summary>
    static Spawned Start(LabStart p, bool capture)
    {
        var child = Spawned.Start(p.Exe, p.Argv, p.Env, capture, out int e);
        if (child != null) return child;
        throw new ExitException(e == Errno.ENOENT ? 127 : 126, $"{p.Argv[0]}: {Errno.StrError(e)}");
    }

    static Command CompareCommand()
    {
        var mount = MountOption();
        var program = new Argument<string[]>("PROGRAM") { Description = "the program and its arguments (after --)", Arity = ArgumentArity.OneOrMore };
        var all = new Option<bool>("--all") { Description = "show every counter, zeros too" };
        var heap = HeapOption();
        var cmd = new Command("compare", "run a program once per fault handler design and show their counters side by side") { mount, all, heap, program };
        cmd.SetAction(r =>
        {
            var m = FindMount(r.GetValue(mount));
            using var conn = ConnectDaemon(m, out var socket);
            var argv = r.GetValue(program)!;
            var columns = new List<(string Vm, Dictionary<string, string> Counters)>();
            string? firstOut = null;
            foreach (var vm in Resolvers.Names)
            {
                conn.DropCaches();   // every design starts from a cold page cache
                var prog = LabProgram(m, socket, argv, vm, r.GetValue(heap)!);
                ulong run = prog.Run;
                var before = KernelFaults.OfReapedChildren();
                var child = Start(prog, capture: true);
                string output;
                using (var reader = new StreamReader(child.Stdout!)) output = reader.ReadToEnd();
                int exit = child.Wait();
                if (exit != 0)
                    throw new LabException($"{argv[0]} exited with status {exit} under --vm {vm}");
                firstOut ??= output;
                if (output != firstOut)
                    throw new LabException($"{argv[0]} printed different output under --vm {vm} than under --vm {Resolvers.Names[0]}");
                var text = conn.Stat(run);
                if (Unserved(text) is long n and > 0)
                    throw new LabException($"{argv[0]} exec'd {n} statically linked program(s) under --vm {vm}: they ran outside the lab");
                columns.Add((vm, ParseStats((KernelFaults.OfReapedChildren() - before).WithCoverage(text))));
            }
            Console.Out.Write(CompareTable(columns, r.GetValue(all)));
            Console.Out.WriteLine($"output: identical under all {columns.Count} designs ({firstOut!.Length} bytes)");
            return 0;
        });
        return cmd;
    }

    static Command SwapCommand()
    {
        var file = new Argument<string>("FILE") { Description = "a swap store (SQLite) file" };
        var top = IntOption("--top", "owners to list", min: 0, defaultValue: 20);
        var verify = new Option<bool>("--verify") { Description = "also read every stored page and check its checksum (exit 1 if any fails)" };
        var inspect = new Command("inspect", "owners, counts and bad slots of a swap store file") { file, top, verify };
        inspect.SetAction(r =>
        {
            Console.Out.Write(Lab.Swapstore.SwapInspector.Inspect(r.GetValue(file)!, r.GetValue(top), r.GetValue(verify), out long bad));
            return bad == 0 ? 0 : 1;
        });
        return new Command("swap", "the swap store") { inspect };
    }

    static void SetLimit(ControlClient conn, ulong run, long bytes)
    {
        int status = conn.SetLimit(run, (ulong)bytes);
        if (status != 0) throw new LabException($"the lab daemon refused the limit: {Errno.StrError(status)}");
    }

    internal static Dictionary<string, string> ParseStats(string text)
    {
        var d = new Dictionary<string, string>();
        foreach (var line in text.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            if (line.StartsWith('#')) continue;
            var parts = line.Split(' ', 2);
            if (parts.Length == 2) d[parts[0]] = parts[1];
        }
        return d;
    }

    /// <summary>Counter rows, one column per design; rows zero in every design are left out unless asked.</summary>
    public static string CompareTable(IReadOnlyList<(string Vm, Dictionary<string, string> Counters)> columns, bool all)
    {
        var names = new List<string>();
        foreach (var (_, c) in columns)
            foreach (var k in c.Keys)
                if (!names.Contains(k)) names.Add(k);
        var sb = new System.Text.StringBuilder();
        sb.Append("counter".PadRight(26));
        foreach (var (vm, _) in columns) sb.Append(vm.PadLeft(12));
        sb.Append('\n');
        foreach (var name in names)
        {
            var cells = columns.Select(col => col.Counters.TryGetValue(name, out var v) ? v : "-").ToList();
            if (!all && cells.All(v => v is "0" or "0.0" or "-")) continue;
            sb.Append(name.PadRight(26));
            foreach (var v in cells) sb.Append(v.PadLeft(12));
            sb.Append('\n');
        }
        return sb.ToString();
    }

    static Command StatCommand()
    {
        var mount = MountOption();
        var run = new Option<ulong>("--run")
        {
            Description = "only the processes of one `lab run` (its LAB_RUN_ID)",
            CustomParser = r =>
            {
                var v = r.Tokens.Count > 0 ? r.Tokens[0].Value : "";
                if (ulong.TryParse(v, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out ulong id) && id > 0) return id;
                r.AddError($"--run: '{v}' is not a run id (the LAB_RUN_ID of a `lab run`, a number above 0)");
                return 0;
            },
        };
        var raw = new Option<bool>("--raw") { Description = "print `name value` lines, as .lab/stats does" };
        var cmd = new Command("stat", "print the mount's counters") { mount, run, raw };
        cmd.SetAction(r =>
        {
            var m = FindMount(r.GetValue(mount));
            using var conn = ConnectDaemon(m, out _);
            ulong id = r.GetValue(run);
            var text = conn.Stat(id);
            // The daemon answers any id with zeros: a run it has no process of is not one it knows.
            if (id != 0 && ParseStats(text).GetValueOrDefault("processes") is null or "0")
                throw new LabException($"no run {id} on {m} (the daemon keeps the last {Registry.RunsKept} runs)");
            Console.Out.Write(r.GetValue(raw) ? text : Table(text));
            return 0;
        });
        return cmd;
    }

    /// <summary>The stats text as an aligned table, zero counters folded away.</summary>
    public static string Table(string stats)
    {
        var sb = new System.Text.StringBuilder();
        var rows = stats.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        foreach (var line in rows)
        {
            if (line.StartsWith('#')) { sb.Append(line[2..]).Append('\n'); continue; }
            var parts = line.Split(' ', 2);
            if (parts.Length == 2 && parts[1] is not "0" and not "0.0")
                sb.Append("  ").Append(parts[0].PadRight(26)).Append(parts[1].PadLeft(12)).Append('\n');
        }
        return sb.ToString();
    }

    /// <summary>The file a shell would execute for NAME, with the shell's errors and exit codes:
    /// 127 when there is none, 126 when it cannot be executed (a directory, no execute permission).</summary>
    static string ResolveProgram(string name)
    {
        if (name.Length == 0) throw new ExitException(127, "'': command not found");
        if (name.Contains('/'))
        {
            if (Directory.Exists(name)) throw new ExitException(126, $"{name}: Is a directory");
            if (!File.Exists(name)) throw new ExitException(127, $"{name}: No such file or directory");
            if (!Spawned.MayExecute(name)) throw new ExitException(126, $"{name}: Permission denied");
            return Path.GetFullPath(name);
        }
        string? notExecutable = null;
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':'))
        {
            var p = Path.Combine(dir.Length == 0 ? "." : dir, name);
            if (!File.Exists(p)) continue;
            if (Spawned.MayExecute(p)) return Path.GetFullPath(p);
            notExecutable ??= p;   // a shell goes on looking, and reports this one if none will run
        }
        if (notExecutable != null) throw new ExitException(126, $"{notExecutable}: Permission denied");
        throw new ExitException(127, $"{name}: command not found");
    }

    /// <summary>The malloc library `--heap lab` preloads: $LAB_ALLOCATOR, else the Debian jemalloc
    /// (package libjemalloc2, which `make` installs). It must take its memory with mmap(2) through the
    /// dynamic linker, as jemalloc does, so that the shim's mmap serves it.</summary>
    static string FindAllocator()
    {
        var env = Environment.GetEnvironmentVariable("LAB_ALLOCATOR");
        if (!string.IsNullOrEmpty(env))
            return File.Exists(env) ? Path.GetFullPath(env) : throw new LabException($"LAB_ALLOCATOR: {env}: no such file");
        foreach (var c in new[] { "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2" })
            if (File.Exists(c)) return c;
        throw new LabException("libjemalloc.so.2 not found: install the libjemalloc2 package (`make deps` does), or run with --heap glibc");
    }

    /// <summary>liblabpreload.so: $LAB_PRELOAD, next to this program, or the build/ folder of the tree.</summary>
    public static string FindShim()
    {
        var env = Environment.GetEnvironmentVariable("LAB_PRELOAD");
        if (!string.IsNullOrEmpty(env) && File.Exists(env)) return Path.GetFullPath(env);
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
        {
            foreach (var c in new[] { Path.Combine(d.FullName, "liblabpreload.so"), Path.Combine(d.FullName, "build", "liblabpreload.so") })
                if (File.Exists(c)) return c;
        }
        throw new LabException("liblabpreload.so not found (run `make`, or set LAB_PRELOAD)");
    }
}

/// <summary>A failure reported in one line with its own exit status (a shell's 126 and 127 for a program that cannot start).</summary>
public sealed class ExitException(int exitCode, string message) : Exception(message)
{
    public int ExitCode { get; } = exitCode;
}

/// <summary>Lab mounts as /proc/self/mountinfo lists them.</summary>
public static class Mounts
{
    public static List<string> LabMounts()
    {
        var list = new List<string>();
        foreach (var line in File.ReadLines("/proc/self/mountinfo"))
        {
            int dash = line.IndexOf(" - ", StringComparison.Ordinal);
            if (dash < 0) continue;
            var fstype = line[(dash + 3)..].Split(' ')[0];
            if (fstype != "fuse.lab") continue;
            list.Add(Unescape(line.Split(' ')[4]));
        }
        return list;
    }

    public static bool IsLabMount(string path) => LabMounts().Contains(Path.GetFullPath(path).TrimEnd('/') is var p && p.Length > 0 ? p : "/");

    static string Unescape(string s)
    {
        if (!s.Contains('\\')) return s;
        var sb = new System.Text.StringBuilder();
        for (int i = 0; i < s.Length; i++)
        {
            if (s[i] == '\\' && i + 3 < s.Length) { sb.Append((char)Convert.ToInt32(s.Substring(i + 1, 3), 8)); i += 3; }
            else sb.Append(s[i]);
        }
        return sb.ToString();
    }
}
