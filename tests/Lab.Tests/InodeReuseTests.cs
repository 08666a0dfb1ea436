using Lab.Fusefs;
using Lab.Interop;

namespace Lab.Tests;

/// <summary>
/// Files are told apart by what they are, not by their inode number: a deleted file's number goes
/// to the next file made (ext4 does this at once), and a mapping of the new file must show its own
/// bytes, a mapping of the deleted (or renamed-over) one its old bytes, with no SIGBUS.
/// </summary>
public sealed class InodeReuseTests(ITestOutputHelper output)
{
    (RunResult R, Dictionary<string, long> C) Run(LabMount m, string vm, string[] limit, params string[] argv)
    {
        var args = new List<string> { "run", "--mount", m.Mount, "--vm", vm, "--stats" };
        args.AddRange(limit);
        args.Add("--");
        args.AddRange(argv);
        var r = Sh.Run(Repo.Lab, args);
        output.WriteLine($"$ lab {string.Join(' ', args)}\n{r}");
        return (r, LabMount.ParseCounters(r.Stderr));
    }

    /// <summary>Whether the backing file system gives a deleted file's number to the next file (ext4,
    /// xfs do; tmpfs does not). Measured in the backing directory itself.</summary>
    static bool BackingReusesNumbers(LabMount m)
    {
        var seen = new HashSet<long>();
        for (int i = 0; i < 8; i++)
        {
            var f = m.B($"probe{i}");
            File.WriteAllBytes(f, new byte[1]);
            var ino = Sh.Run("stat", new[] { "-c", "%i", f }).Stdout.Trim();
            File.Delete(f);
            if (!seen.Add(long.Parse(ino))) return true;
        }
        return false;
    }

    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void MapReadUnlinkLoopReadsEachFilesBytes(string vm)
    {
        using var m = new LabMount(vm);
        bool reuses = BackingReusesNumbers(m);
        foreach (var kind in new[] { "shared", "private" })
            foreach (var limit in new[] { Array.Empty<string>(), new[] { "--resident-limit", "256K" } })
            {
                var (r, c) = Run(m, vm, limit, Repo.Prog("inoreuse"), "loop", m.Mount, kind, "8");
                Assert.True(r.ExitCode == 0 && r.Stdout.EndsWith("ok\n"), $"{kind} {string.Join(' ', limit)}: {r}\n{m.DaemonLog}");
                Assert.Equal(0, LabMount.Get(c, "pager_errors"));
                var inos = r.Stdout.Split('\n').Where(l => l.StartsWith("ino ")).ToList();
                Assert.Equal(8, inos.Count);
                // The case at issue: some round mapped a number an earlier (deleted) file had.
                if (reuses) Assert.True(inos.Distinct().Count() < inos.Count, "no inode number came back: " + string.Join(',', inos));
            }
        Assert.DoesNotContain("error", m.DaemonLog);
    }

    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void RenameOverAMappedFileKeepsBothFilesBytes(string vm)
    {
        using var m = new LabMount(vm);
        foreach (var kind in new[] { "shared", "private" })
        {
            var (r, c) = Run(m, vm, [], Repo.Prog("inoreuse"), "rename", m.Mount, kind);
            Assert.True(r.ExitCode == 0 && r.Stdout.EndsWith("ok\n"), $"{kind}: {r}\n{m.DaemonLog}");
            Assert.Equal(0, LabMount.Get(c, "pager_errors"));
        }
        Assert.DoesNotContain("error", m.DaemonLog);
    }

    /// <summary>A disk whose one file, "bad" (1 MiB), fails every read with EIO.</summary>
    sealed class FailingDisk : IFuseFileSystem
    {
        public int Reads;

        static void Attr(ulong node, out FuseAttr a)
        {
            a = default;
            a.Ino = node;
            a.Mode = node == 1 ? 0x4000u | 0x1ED /*0755*/ : 0x8000u | 0x1A4 /*0644*/;
            a.Nlink = 1;
            a.Size = node == 1 ? 0UL : 1UL << 20;
            a.BlkSize = 4096;
        }

        public int Lookup(in FuseContext c, ulong parent, ReadOnlySpan<byte> name, out FuseEntryOut entry)
        {
            entry = default;
            if (parent != 1 || !name.SequenceEqual("bad"u8)) return Errno.ENOENT;
            entry.NodeId = 2;
            Attr(2, out entry.Attr);
            return 0;
        }

        public int GetAttr(in FuseContext c, ulong node, ulong? fh, out FuseAttrOut attr)
        {
            attr = default;
            if (node is not (1 or 2)) return Errno.ENOENT;
            Attr(node, out attr.Attr);
            return 0;
        }

        public int Open(in FuseContext c, ulong node, uint flags, out FuseOpenOut open)
        {
            open = default;
            open.Fh = 1;
            open.OpenFlags = FuseOpenOut.DirectIo;
            return 0;
        }

        public int Read(in FuseContext c, ulong node, ulong fh, long offset, Span<byte> dest, out int read)
        {
            Interlocked.Increment(ref Reads);
            read = 0;
            return Errno.EIO;
        }

        public int ReadDir(in FuseContext c, ulong node, ulong fh, long offset, ref FuseDirWriter writer) => 0;
    }

    [KernelFact]
    public void APagerFailureIsSigbusAndIsLoggedOnce()
    {
        using var m = new LabMount();
        // A failing disk mounted inside the backing directory: the lab's reads of "bad" get EIO.
        var disk = new FailingDisk();
        Directory.CreateDirectory(m.B("disk"));
        using var server = FuseServer.Mount(m.B("disk"), disk);
        server.Start(2);
        var bad = m.M("disk/bad");
        for (int i = 0; i < 3; i++)
        {
            var (r, c) = Run(m, "freebsd", [], Repo.Prog("inoreuse"), "touch", bad);
            Assert.Equal(128 + 7, r.ExitCode); // SIGBUS, as Linux gives for a mapped page it cannot read
            Assert.DoesNotContain("byte", r.Stdout);
            Assert.Equal(1, LabMount.Get(c, "pager_errors"));
        }
        Assert.True(disk.Reads > 0);
        // Said once, with the file and the cause (the next line may come only after the interval).
        var lines = m.DaemonLog.Split('\n').Where(l => l.Contains("pager:")).ToList();
        Assert.True(lines.Count == 1, m.DaemonLog);
        Assert.Contains("page 0 of bad", lines[0]);
        Assert.Contains("Input/output error", lines[0]);
        Assert.Contains("SIGBUS", lines[0]);
    }

    [KernelFact]
    public void GitCloneIntoTheMount()
    {
        using var m = new LabMount();
        // A small repository outside the mount, with a few commits and a packed history.
        var src = Path.Combine(m.Dir, "src");
        Directory.CreateDirectory(src);
        string Git(string dir, params string[] a)
        {
            var r = Sh.Run("git", new[] { "-C", dir, "-c", "user.name=lab", "-c", "user.email=lab@example.invalid",
                                          "-c", "init.defaultBranch=main" }.Concat(a));
            Assert.True(r.ExitCode == 0, $"git {string.Join(' ', a)}: {r}");
            return r.Stdout;
        }
        Git(src, "init", "-q");
        for (int i = 0; i < 5; i++)
        {
            File.WriteAllText(Path.Combine(src, $"file{i}.txt"), string.Concat(Enumerable.Repeat($"line {i}\n", 2000 + i)));
            Git(src, "add", ".");
            Git(src, "commit", "-q", "-m", $"commit {i}");
        }
        Git(src, "gc", "-q");
        var head = Git(src, "rev-parse", "HEAD");
        for (int run = 0; run < 3; run++)
        {
            var dst = m.M($"clone{run}");
            var (r, c) = Run(m, "freebsd", [], "git", "clone", "-q", "--no-hardlinks", src, dst);
            Assert.True(r.ExitCode == 0, $"clone {run}: {r}\n{m.DaemonLog}");
            Assert.Equal(0, LabMount.Get(c, "pager_errors"));
            // git reads its own config, index and pack through lab mappings: all must be the clone's.
            var (log, _) = Run(m, "freebsd", [], "git", "-C", dst, "rev-parse", "HEAD");
            Assert.True(log.ExitCode == 0, log.ToString());
            Assert.Equal(head, log.Stdout);
            var (fsck, _) = Run(m, "freebsd", [], "git", "-C", dst, "fsck", "--full", "--no-progress");
            Assert.True(fsck.ExitCode == 0, fsck.ToString());
            for (int i = 0; i < 5; i++)
                Assert.Equal(string.Concat(Enumerable.Repeat($"line {i}\n", 2000 + i)), File.ReadAllText(m.B($"clone{run}/file{i}.txt")));
        }
        Assert.DoesNotContain("error", m.DaemonLog);
    }

    [KernelFact]
    public void Sqlite3InWalModeReopenedTwentyTimes()
    {
        using var m = new LabMount();
        var db = m.M("wal.db");
        var (r0, _) = Run(m, "freebsd", [], "sqlite3", db,
            "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t(v) VALUES ('row 0');");
        Assert.True(r0.ExitCode == 0 && r0.Stdout == "wal\n", r0.ToString() + m.DaemonLog);
        for (int i = 1; i <= 20; i++)
        {
            // Each run opens the database again: sqlite3 makes and maps a new -shm (the old one's
            // number may come back), writes through the WAL and checkpoints at close.
            var (r, c) = Run(m, "freebsd", [], "sqlite3", db,
                $"INSERT INTO t(v) VALUES ('row {i}'); SELECT count(*), max(v) FROM t; PRAGMA journal_mode;");
            Assert.True(r.ExitCode == 0, $"reopen {i}: {r}\n{m.DaemonLog}");
            Assert.Equal($"{i + 1}|row {(i >= 9 ? 9 : i)}\nwal\n", r.Stdout);
            Assert.Equal(0, LabMount.Get(c, "pager_errors"));
        }
        var check = Sh.Run("sqlite3", new[] { m.B("wal.db"), "PRAGMA integrity_check; SELECT count(*) FROM t;" });
        Assert.Equal("ok\n21\n", check.Stdout);
        Assert.DoesNotContain("error", m.DaemonLog);
    }
}
