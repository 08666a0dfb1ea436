using System.Text;
using Lab.Interop;
using Lab.Linux;

namespace Lab.Tests;

/// <summary>More unmodified programs under `lab run`, and the control socket's defences.</summary>
public sealed class ProgramsAndControlTests(ITestOutputHelper output)
{
    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void Sqlite3WithMmapSizeMatchesANativeRun(string vm)
    {
        using var m = new LabMount(vm);
        const string sql = """
            PRAGMA mmap_size=268435456;
            CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
            WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<30000)
              INSERT INTO t SELECT x, printf('%08d-%s', x, substr('abcdefghijklmnop', 1 + x % 16)) FROM c;
            CREATE INDEX tv ON t(v);
            SELECT count(*), sum(length(v)), max(v) FROM t;
            PRAGMA integrity_check;
            """;
        var native = Sh.Run("sqlite3", new[] { Path.Combine(m.Dir, "native.db"), sql });
        Assert.True(native.ExitCode == 0, native.ToString());
        var (r, c) = m.RunCounted("sqlite3", m.M("lab.db"), sql);
        output.WriteLine(r.ToString());
        Assert.True(r.ExitCode == 0, r.ToString() + m.DaemonLog);
        Assert.Equal(native.Stdout, r.Stdout);
        Assert.EndsWith("ok\n", r.Stdout);
        // sqlite3 read its database through the shared mapping: the lab served those faults.
        Assert.True(LabMount.Get(c, "v_io_faults") > 0, "no page of the mapped database was faulted through the lab");
        Assert.Equal(0, LabMount.Get(c, "lookup_miss"));
        // The file on the backing directory is a valid database with every row.
        var check = Sh.Run("sqlite3", new[] { m.B("lab.db"), "PRAGMA integrity_check; SELECT count(*) FROM t;" });
        Assert.Equal("ok\n30000\n", check.Stdout);
    }

    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void RipgrepWithMmapMatchesANativeRun(string vm)
    {
        using var m = new LabMount(vm);
        var rnd = new Random(5);
        for (int d = 0; d < 4; d++)
        {
            Directory.CreateDirectory(m.B($"d{d}"));
            for (int f = 0; f < 6; f++)
            {
                var sb = new StringBuilder();
                for (int line = 0; line < 2000 + rnd.Next(2000); line++)
                    sb.Append(rnd.Next(40) == 0 ? $"needle {d} {f} {line}\n" : $"hay {rnd.Next()} {line}\n");
                File.WriteAllText(m.B($"d{d}/f{f}.txt"), sb.ToString());
            }
        }
        string[] Args(string dir) => new[] { "--mmap", "--sort", "path", "-n", "needle", dir };
        var native = Sh.Run("rg", Args(m.Backing), cwd: m.Backing);
        var (r, c) = m.RunCounted(new[] { "rg" }.Concat(Args(m.Mount)).ToArray());
        Assert.True(r.ExitCode == 0, r.ToString() + m.DaemonLog);
        Assert.Equal(native.Stdout.Replace(m.Backing, "X"), r.Stdout.Replace(m.Mount, "X"));
        Assert.Contains("needle", r.Stdout);
        Assert.True(LabMount.Get(c, "v_io_faults") > 0, "rg's mmaps of lab files were not served by the lab");
        Assert.Equal(0, LabMount.Get(c, "lookup_miss"));
    }

    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void ExecdChildrenConnectAgain(string vm)
    {
        using var m = new LabMount(vm);
        // bash forks twice; each child execs the test program, which connects on its own.
        var (r, c) = m.RunCounted("/bin/bash", "-c", $"{Repo.Prog("mmapcheck")} --anon 5 && {Repo.Prog("mmapcheck")} --anon 7");
        Assert.True(r.ExitCode == 0, r.ToString() + m.DaemonLog);
        Assert.Equal("anon=ok\nanon=ok\n", r.Stdout);
        // 5 + 7 pages, each zero-filled once by the lab.
        Assert.Equal(12, LabMount.Get(c, vm.StartsWith("uvm") ? "flt_przero" : "v_zfod"));
        Assert.True(LabMount.Get(c, "processes") >= 3, "bash and both exec'd programs are lab processes");
    }

    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void LabMemoryPassedToReadAndWriteOnLabFiles(string vm)
    {
        using var m = new LabMount(vm);
        var a = new byte[5 * 4096];
        new Random(3).NextBytes(a);
        File.WriteAllBytes(m.B("a.bin"), a);
        File.WriteAllBytes(m.B("same.bin"), a);
        // The kernel copies from and into pages nobody has touched yet: each copy faults on lab
        // memory inside the syscall, while the FUSE request waits for that copy.
        var script = $$"""
            import mmap, os
            fa = os.open("{{m.M("a.bin")}}", os.O_RDONLY)
            pa = mmap.mmap(fa, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
            fb = os.open("{{m.M("b.bin")}}", os.O_RDWR | os.O_CREAT, 0o644)
            assert os.write(fb, pa) == len(pa)                        # write(2) from a private file mapping
            anon = mmap.mmap(-1, len(pa))                              # lab anonymous memory, untouched
            os.lseek(fa, 0, 0)
            assert os.readv(fa, [anon]) == len(pa)                     # read(2) into it
            fs = os.open("{{m.M("same.bin")}}", os.O_RDWR)
            ps = mmap.mmap(fs, 0)                                      # shared, untouched
            os.lseek(fs, 4096, 0)
            assert os.write(fs, memoryview(ps)[:4096]) == 4096         # write(2) of page 0 over page 1 of the same file
            print(bytes(anon) == bytes(pa), os.pread(fs, 8, 4096) == bytes(ps[:8]))
            """;
        var (r, c) = m.RunCounted(Repo.Python, "-c", script);
        Assert.True(r.ExitCode == 0, r.ToString() + m.DaemonLog);
        Assert.Equal("True True\n", r.Stdout);
        Assert.Equal(a, File.ReadAllBytes(m.B("b.bin")));
        var same = File.ReadAllBytes(m.B("same.bin"));
        Assert.Equal(a.AsSpan(0, 4096).ToArray(), same.AsSpan(4096, 4096).ToArray());
        Assert.True(LabMount.Get(c, "v_io_faults") >= 2, "the kernel's copies faulted through the lab");
        Assert.Equal(0, LabMount.Get(c, "lookup_miss"));
    }

    [KernelFact]
    public void CompareRunsEveryDesignSideBySide()
    {
        using var m = new LabMount();
        File.WriteAllBytes(m.B("p.dat"), Enumerable.Range(0, 4 * 4096).Select(i => (byte)(i * 7 + 3)).ToArray());
        File.WriteAllBytes(m.B("s.dat"), Enumerable.Range(0, 4 * 4096).Select(i => (byte)(i * 13 + 5)).ToArray());
        var r = Sh.Lab("compare", "--mount", m.Mount, "--", Repo.Prog("mmapcheck"), m.M("p.dat"), m.M("s.dat"));
        output.WriteLine(r.ToString());
        Assert.True(r.ExitCode == 0, r.ToString() + m.DaemonLog);
        var lines = r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(new[] { "counter" }.Concat(Lab.Vm.Resolvers.Names), lines[0].Split(' ', StringSplitOptions.RemoveEmptyEntries));
        // Every design ran the program's two processes and served its faults.
        var procs = lines.Single(l => l.StartsWith("processes ")).Split(' ', StringSplitOptions.RemoveEmptyEntries).Skip(1);
        Assert.All(procs, v => Assert.Equal("2", v));
        // Each design starts from a cold page cache, so each one reads the files itself.
        var io = lines.Single(l => l.StartsWith("v_io_faults ")).Split(' ', StringSplitOptions.RemoveEmptyEntries).Skip(1);
        Assert.All(io, v => Assert.True(long.Parse(v) >= 2, $"v_io_faults {v}: a design found the cache warm"));
        Assert.Contains($"output: identical under all {Lab.Vm.Resolvers.Names.Count} designs", r.Stdout);

        // A program whose output differs from run to run is refused when there is more than one design.
        var d = Sh.Lab("compare", "--mount", m.Mount, "--", "/bin/sh", "-c", "echo $$");
        if (Lab.Vm.Resolvers.Names.Count > 1)
        {
            Assert.NotEqual(0, d.ExitCode);
            Assert.Contains("printed different output", d.Stderr);
        }
        else Assert.Equal(0, d.ExitCode);
    }

    [Fact]
    public void SwapInspectPrintsOwnersAndCounts()
    {
        var dir = Directory.CreateTempSubdirectory("labswap-").FullName;
        try
        {
            var path = Path.Combine(dir, "swap.db");
            using (var store = Lab.Swapstore.SwapStore.Open(path))
            {
                var page = new byte[4096];
                var writes = new List<Lab.Swapstore.SlotWrite>();
                for (int i = 0; i < 5; i++)
                    writes.Add(new(store.Allocate(Lab.Swapstore.SwapOwner.Object(42, i)), page));
                for (int i = 0; i < 2; i++)
                    writes.Add(new(store.Allocate(Lab.Swapstore.SwapOwner.Anon(7 + i)), page));
                store.WriteCluster(writes.ToArray());
            }
            var r = Sh.Lab("swap", "inspect", path);
            output.WriteLine(r.ToString());
            Assert.True(r.ExitCode == 0, r.ToString());
            Assert.Contains("slots: 7 used, 0 free, 0 bad (highest slot 7)", r.Stdout);
            Assert.Matches(@"object +42 +5 ", r.Stdout);
            Assert.Contains("bad slots: 0", r.Stdout);
            var bad = Sh.Lab("swap", "inspect", Path.Combine(dir, "missing.db"));
            Assert.NotEqual(0, bad.ExitCode);
            Assert.Single(bad.Stderr.Trim().Split('\n'));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [KernelFact]
    public void LabDirectoryShowsProcessesMapsAndObjects()
    {
        using var m = new LabMount();
        File.WriteAllBytes(m.B("f.bin"), new byte[3 * 4096]);
        var script = $$"""
            import mmap, os, sys
            f = open("{{m.M("f.bin")}}", "r+b")
            p = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            s = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED)
            p[0] = 1; s[4096] = 2
            print("ready", os.getpid(), flush=True)
            sys.stdin.readline()
            """;
        var psi = new System.Diagnostics.ProcessStartInfo(Repo.Lab)
        {
            RedirectStandardOutput = true, RedirectStandardInput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        foreach (var a in new[] { "run", "--mount", m.Mount, "--", Repo.Python, "-c", script }) psi.ArgumentList.Add(a);
        psi.Environment["LAB_PRELOAD"] = Repo.Shim;
        using var proc = System.Diagnostics.Process.Start(psi)!;
        try
        {
            var ready = proc.StandardOutput.ReadLine() ?? throw new InvalidOperationException(proc.StandardError.ReadToEnd());
            var pid = ready.Split(' ')[1];
            Assert.Contains(pid, Directory.GetDirectories(m.M(".lab/processes")).Select(Path.GetFileName));
            var maps = File.ReadAllText(m.M($".lab/processes/{pid}/maps"));
            output.WriteLine(maps);
            Assert.Contains("private-file", maps);
            Assert.Contains("shared-file", maps);
            Assert.Contains("v_vm_faults ", File.ReadAllText(m.M($".lab/processes/{pid}/stats")));
            // The file's vnode object is listed with its size, and the private mapping's shadow too.
            var objects = Directory.GetFiles(m.M(".lab/objects")).Select(File.ReadAllText).ToList();
            var vnode = Assert.Single(objects, o => o.Contains("kind vnode") && o.Contains("file f.bin"));
            output.WriteLine(vnode);
            Assert.Contains("size_pages 3", vnode);
            Assert.Contains(objects, o => o.Contains("kind anonymous"));   // the private mapping's shadow
            Assert.False(File.Exists(m.M(".lab/processes/999999999/maps")));
        }
        finally
        {
            if (!proc.HasExited) { proc.StandardInput.WriteLine(); proc.WaitForExit(20_000); }
            if (!proc.HasExited) proc.Kill(entireProcessTree: true);
        }
    }

    [KernelFact]
    public void MalformedControlMessageClosesOnlyThatConnection()
    {
        using var m = new LabMount();
        var sock = m.M(".lab/control");
        // Garbage: an unknown type, then a frame that claims more payload than allowed.
        foreach (var frame in new[] { Frame(999, 4), Frame(Proto.Map, 4), Frame(Proto.Hello, 200_000) })
        {
            using var conn = ControlConnection.Connect(sock, out int e) ?? throw new InvalidOperationException($"connect: errno {e}");
            Assert.True(SendRaw(conn, frame));
            Assert.Null(conn.Receive());   // the daemon closed this connection
        }
        // A stat request still works, and so does a program.
        using (var conn = ControlConnection.Connect(sock, out _)!)
        {
            Assert.True(conn.Send(Proto.Stat, 7, 0, new byte[8]));
            var reply = conn.Receive();
            Assert.NotNull(reply);
            Assert.Equal(Proto.Stat | Proto.Reply, reply!.Value.Type);
        }
        var r = m.Run(Repo.Prog("mmapcheck"), "--anon", "3");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.False(m.Daemon.HasExited);
    }

    [KernelFact]
    public void ControlSocketRefusesOtherUsers()
    {
        using var m = new LabMount();
        var socket = new FileInfo(m.M(".lab/control")).LinkTarget!;
        // As nobody: connect, ask for stats; the daemon closes the connection without a reply.
        var script = $$"""
            import socket, struct
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect("{{socket}}")
            try:
                s.sendall(struct.pack("<IIIi", {{Proto.Stat}}, 8, 1, 0) + bytes(8))
                print("reply" if s.recv(64) else "closed")
            except (ConnectionResetError, BrokenPipeError):
                print("closed")
            """;
        var r = Sh.Run("setpriv", new[] { "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", script });
        output.WriteLine(r.ToString());
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal("closed\n", r.Stdout);
        Assert.Contains("refused a control connection from uid 65534", m.DaemonLog);
    }

    static byte[] Frame(uint type, int len)
    {
        var b = new byte[16 + Math.Min(len, 64)];
        BitConverter.TryWriteBytes(b.AsSpan(0), type);
        BitConverter.TryWriteBytes(b.AsSpan(4), (uint)len);
        BitConverter.TryWriteBytes(b.AsSpan(8), 1u);
        return b;
    }

    static unsafe bool SendRaw(ControlConnection conn, byte[] bytes)
    {
        fixed (byte* p = bytes)
            return Native.Write(conn.Fd, p, (nuint)bytes.Length) == bytes.Length;
    }
}
