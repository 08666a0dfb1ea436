using System.Text;
using Lab.Fusefs;
using Mono.Unix.Native;
using Xunit;

namespace Lab.Tests.Fusefs;

/// <summary>A POSIX battery in the spirit of go-fuse's posixtest, on a real mount served in-process.</summary>
public class PosixTests
{
    private static readonly FuseContext Root = new(1, 0, 0, 0);

    private static string Py(string code, string cwd) => Sh.Ok($"python3 -c '{code.Replace("'", "'\\''")}'", cwd);

    [KernelFact]
    public unsafe void Append_from_two_descriptors_lands_at_the_end()
    {
        using var m = new TestMount();
        File.WriteAllText(m.M("log"), "0");
        int a = Syscall.open(m.M("log"), OpenFlags.O_WRONLY | OpenFlags.O_APPEND);
        int b = Syscall.open(m.M("log"), OpenFlags.O_WRONLY | OpenFlags.O_APPEND);
        try
        {
            Assert.True(a >= 0 && b >= 0);
            foreach (var (fd, s) in new[] { (a, "a1"), (b, "b1"), (a, "a2"), (b, "b2") })
            {
                var bytes = Encoding.ASCII.GetBytes(s);
                fixed (byte* p = bytes) Assert.Equal(2, (int)Syscall.write(fd, p, 2));
            }
            Assert.Equal(0, Syscall.lseek(a, 0, SeekFlags.SEEK_SET)); // the position does not matter to O_APPEND
            byte bang = (byte)'!';
            Assert.Equal(1, (int)Syscall.write(a, &bang, 1));
        }
        finally { Syscall.close(a); Syscall.close(b); }
        Sh.Ok("echo -n x >> log && echo -n y >> log", m.MountPoint);
        Assert.Equal("0a1b1a2b2!xy", File.ReadAllText(m.M("log")));
        Assert.Equal("0a1b1a2b2!xy", File.ReadAllText(m.B("log")));
    }

    [KernelFact]
    public void Truncate_down_and_up_on_an_open_descriptor()
    {
        using var m = new TestMount();
        var data = Enumerable.Range(0, 20000).Select(i => (byte)(i * 7 + 1)).ToArray();
        File.WriteAllBytes(m.M("t"), data);
        using (var f = new FileStream(m.M("t"), FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite, 0))
        {
            f.SetLength(5000);
            Assert.Equal(5000, new FileInfo(m.M("t")).Length);
            f.SetLength(12000);
            var back = new byte[12000];
            f.Position = 0;
            f.ReadExactly(back);
            Assert.Equal(data[..5000], back[..5000]);
            Assert.All(back[5000..], b => Assert.Equal(0, b)); // no old bytes come back after a shrink
            f.SetLength(0);
            Assert.Equal(0, f.Read(back));
        }
        Assert.Equal(0, new FileInfo(m.B("t")).Length);
        Sh.Ok("printf abc > t && truncate -s 1M t && truncate -s 2 t", m.MountPoint);
        Assert.Equal("ab", File.ReadAllText(m.M("t")));
    }

    [KernelFact]
    public void Unlink_and_nlink_follow_the_links()
    {
        using var m = new TestMount();
        File.WriteAllText(m.M("a"), "data");
        Sh.Ok("ln a b && ln a c", m.MountPoint);
        Assert.Equal("3", Sh.Ok("stat -c %h a", m.MountPoint).Trim());
        using (var open = new FileStream(m.M("b"), FileMode.Open, FileAccess.ReadWrite))
        {
            Sh.Ok("rm a b", m.MountPoint);
            Assert.Equal("1", Sh.Ok("stat -c %h c", m.MountPoint).Trim());
            open.Write("DATA"u8);
            open.Flush();
            Sh.Ok("rm c", m.MountPoint);
            open.Position = 0;
            var buf = new byte[4];
            open.ReadExactly(buf); // open but nameless: still readable and writable
            Assert.Equal("DATA", Encoding.ASCII.GetString(buf));
        }
        Assert.Equal([".lab"], Directory.GetFileSystemEntries(m.MountPoint).Select(Path.GetFileName));
        Assert.Equal(Lab.Interop.Errno.ENOENT, m.Fs.Lookup(in Root, 1, "a"u8, out _));
    }

    [KernelFact]
    public void Symlinks_are_never_followed_by_the_server()
    {
        using var m = new TestMount();
        var outside = Path.Combine(m.Root, "outside");
        Directory.CreateDirectory(outside);
        File.WriteAllText(Path.Combine(outside, "secret"), "s");
        File.CreateSymbolicLink(m.B("up"), "../outside");
        File.CreateSymbolicLink(m.B("abs"), outside);
        File.CreateSymbolicLink(m.B("file"), Path.Combine(outside, "secret"));
        Assert.Equal("../outside", Sh.Ok("readlink up", m.MountPoint).Trim());
        foreach (var link in new[] { "up"u8.ToArray(), "abs"u8.ToArray(), "file"u8.ToArray() })
        {
            Assert.Equal(0, m.Fs.Lookup(in Root, 1, link, out var e));
            Assert.Equal(0xA000u, e.Attr.Mode & 0xF000);
            ulong id = e.NodeId;
            // Names under a link are never looked up through it, nor created.
            Assert.Equal(Lab.Interop.Errno.ENOTDIR, m.Fs.Lookup(in Root, id, "secret"u8, out _));
            Assert.Equal(Lab.Interop.Errno.ENOTDIR, m.Fs.Mkdir(in Root, id, "made"u8, 0x1ED, out _));
            Assert.Equal(Lab.Interop.Errno.ENOTDIR, m.Fs.Create(in Root, id, "made"u8, 2, 0x1A4, out _, out _));
            Assert.Equal(Lab.Interop.Errno.ELOOP, m.Fs.Open(in Root, id, 0, out _));
            var set = new FuseSetAttrIn { Valid = FuseFattr.Size, Size = 0 };
            Assert.Equal(Lab.Interop.Errno.EINVAL, m.Fs.SetAttr(in Root, id, in set, out _));
            set = new FuseSetAttrIn { Valid = FuseFattr.Mode, Mode = 0x1FF };
            Assert.Equal(Lab.Interop.Errno.EOPNOTSUPP, m.Fs.SetAttr(in Root, id, in set, out _));
            Assert.Equal(Lab.Interop.Errno.EOPNOTSUPP, m.Fs.SetXattr(in Root, id, "user.x"u8, "v"u8, 0));
            Assert.Equal(Lab.Interop.Errno.ENOTDIR, m.Fs.OpenDir(in Root, id, 0, out _));
        }
        Assert.Equal("s", File.ReadAllText(Path.Combine(outside, "secret")));
        Assert.False(Directory.Exists(Path.Combine(outside, "made")));
        Assert.Equal(new[] { "secret" }, Directory.GetFileSystemEntries(outside).Select(Path.GetFileName));
        // The mode of the target is untouched.
        Assert.Equal(0, Syscall.stat(Path.Combine(outside, "secret"), out var st));
        Assert.NotEqual(FilePermissions.ALLPERMS, FilePermissions.ALLPERMS & st.st_mode);
    }

    [KernelFact]
    public void Bad_names_get_the_right_errno()
    {
        using var m = new TestMount();
        Assert.Equal(Lab.Interop.Errno.EINVAL, m.Fs.Mkdir(in Root, 1, "a/b"u8, 0x1ED, out _));
        Assert.Equal(Lab.Interop.Errno.EINVAL, m.Fs.Symlink(in Root, 1, "x\0y"u8, "t"u8, out _));
        Assert.Equal(Lab.Interop.Errno.ENAMETOOLONG, m.Fs.Create(in Root, 1, Encoding.ASCII.GetBytes(new string('c', 256)), 2, 0x1A4, out _, out _));
        Assert.Equal(0, m.Fs.Mkdir(in Root, 1, Encoding.ASCII.GetBytes(new string('d', 255)), 0x1ED, out _)); // NAME_MAX itself is fine
        Assert.Equal(Lab.Interop.Errno.EINVAL, m.Fs.Rename(in Root, 1, ".."u8, 1, "x"u8, 0));
        Assert.Equal(Lab.Interop.Errno.EINVAL, m.Fs.Rename(in Root, 1, "x"u8, 1, "y"u8, 4)); // RENAME_WHITEOUT: not ours
        Assert.Equal(Lab.Interop.Errno.ENOENT, m.Fs.Unlink(in Root, 1, "missing"u8));
        Assert.Equal(Lab.Interop.Errno.ENOENT, m.Fs.Lookup(in Root, 1, ""u8, out _));
        Directory.CreateDirectory(m.B("full"));
        File.WriteAllText(m.B("full/x"), "");
        Assert.Equal(Lab.Interop.Errno.ENOTEMPTY, m.Fs.Rmdir(in Root, 1, "full"u8));
        File.WriteAllText(m.B("plain"), "");
        Assert.Equal(Lab.Interop.Errno.ENOTDIR, m.Fs.Rmdir(in Root, 1, "plain"u8));
        Assert.Equal(Lab.Interop.Errno.EISDIR, m.Fs.Unlink(in Root, 1, "full"u8));
        Assert.Equal(Lab.Interop.Errno.EEXIST, m.Fs.Mkdir(in Root, 1, "plain"u8, 0x1ED, out _));
    }

    [KernelFact]
    public void Xattrs_set_get_list_remove_with_errnos()
    {
        using var m = new TestMount();
        File.WriteAllText(m.M("x"), "");
        Assert.Equal(0, Syscall.setxattr(m.M("x"), "user.one", "1"u8.ToArray(), XattrFlags.XATTR_CREATE));
        Assert.Equal(-1, Syscall.setxattr(m.M("x"), "user.one", "2"u8.ToArray(), XattrFlags.XATTR_CREATE));
        Assert.Equal(Mono.Unix.Native.Errno.EEXIST, Stdlib.GetLastError());
        Assert.Equal(-1, Syscall.setxattr(m.M("x"), "user.two", "2"u8.ToArray(), XattrFlags.XATTR_REPLACE));
        Assert.Equal(Mono.Unix.Native.Errno.ENODATA, Stdlib.GetLastError());
        Assert.Equal(0, Syscall.setxattr(m.M("x"), "user.two", new byte[3000], XattrFlags.XATTR_AUTO));
        Assert.True(Syscall.getxattr(m.M("x"), "user.two", out byte[] v) >= 0);
        Assert.Equal(3000, v.Length);
        Assert.True(Syscall.listxattr(m.M("x"), out string[] names) >= 0);
        Assert.Equal(new[] { "user.one", "user.two" }, names.OrderBy(n => n, StringComparer.Ordinal));
        Assert.Equal(0, Syscall.removexattr(m.M("x"), "user.one"));
        Assert.Equal(-1, Syscall.removexattr(m.M("x"), "user.one"));
        Assert.Equal(Mono.Unix.Native.Errno.ENODATA, Stdlib.GetLastError());
        Assert.Equal(-1, Syscall.getxattr(m.M("x"), "user.nothing", out byte[] _));
        Assert.Equal(Mono.Unix.Native.Errno.ENODATA, Stdlib.GetLastError());
        // A too small buffer: ERANGE, from the kernel's size probe and ours.
        Assert.Equal(-1, Syscall.getxattr(m.M("x"), "user.two", new byte[10], 10));
        Assert.Equal(Mono.Unix.Native.Errno.ERANGE, Stdlib.GetLastError());
        Assert.True(Syscall.getxattr(m.B("x"), "user.two", out byte[] vb) >= 0);
        Assert.Equal(3000, vb.Length);
    }

    private const string HolesScript = """
        import os, sys
        p = sys.argv[1]
        fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(fd, b"A" * 4096, 0)
        os.pwrite(fd, b"B" * 4096, 1 << 20)
        os.posix_fallocate(fd, 3 << 20, 1 << 20)
        out = [os.fstat(fd).st_size]
        for off in (0, 4096, 65536, 1 << 20, (1 << 20) + 4096, 3 << 20):
            for w in (os.SEEK_DATA, os.SEEK_HOLE):
                try: out.append(os.lseek(fd, off, w))
                except OSError as e: out.append("E%d" % e.errno)
        os.system("fallocate -p -o 0 -l 4096 " + p)
        out.append(os.pread(fd, 8, 0))
        try: out.append(os.lseek(fd, 0, os.SEEK_DATA))
        except OSError as e: out.append("E%d" % e.errno)
        os.system("fallocate -z -o 1048576 -l 100 " + p)
        out.append(os.pread(fd, 4, (1 << 20) + 98))
        os.system("fallocate -n -o 8388608 -l 65536 " + p)
        out.append(os.fstat(fd).st_size)
        try: out.append(os.lseek(fd, 9 << 20, os.SEEK_DATA))
        except OSError as e: out.append("E%d" % e.errno)
        print(out)
        """;

    [KernelFact]
    public void Fallocate_and_seek_data_hole_match_the_backing_file_system()
    {
        using var m = new TestMount();
        File.WriteAllText(Path.Combine(m.Root, "holes.py"), HolesScript);
        var script = Path.Combine(m.Root, "holes.py");
        var native = Sh.Ok($"python3 {script} {Path.Combine(m.Root, "native.dat")}", m.Root);
        var mounted = Sh.Ok($"python3 {script} {m.M("holes.dat")}", m.MountPoint);
        Assert.Equal(native, mounted);
        Assert.Contains("b'\\x00\\x00", mounted); // the punched page reads as zeros
    }

    [KernelFact]
    public void Copy_file_range_copies_and_goes_through_a_destination_cache()
    {
        using var m = new TestMount();
        var data = new byte[3 * 1024 * 1024 + 17];
        new Random(3).NextBytes(data);
        File.WriteAllBytes(m.M("src"), data);
        File.WriteAllBytes(m.M("dst2"), new byte[8192]);
        Assert.Equal(0, Syscall.stat(m.M("dst2"), out var st));
        var cache = m.Fs.GetCachedFile(st.st_ino)!;
        Assert.Equal(0, cache.LoadPages(0, 2)); // the destination's pages are in the lab's page cache
        Py("""
            import os
            s = os.open("src", os.O_RDONLY)
            for name, off in (("dst", 0), ("dst2", 100)):
                d = os.open(name, os.O_RDWR | os.O_CREAT, 0o644)
                left, at = os.fstat(s).st_size, 0
                while left:
                    n = os.copy_file_range(s, d, left, at, at + off)
                    assert n > 0
                    left -= n; at += n
                os.close(d)
            """, m.MountPoint);
        Assert.Equal(data, File.ReadAllBytes(m.M("dst")));
        Assert.Equal(data, File.ReadAllBytes(m.B("dst")));
        var d2 = File.ReadAllBytes(m.M("dst2"));
        Assert.Equal(data.Length + 100, d2.Length);
        Assert.Equal(data, d2[100..]);
        // The cached pages hold the copied bytes too (what a MAP_SHARED mapper sees).
        var page = new byte[4096];
        Assert.Equal(0, cache.ReadPages(0, 1, page));
        Assert.Equal(data[..(4096 - 100)], page[100..]);
    }

    [KernelFact]
    public void O_tmpfile_gives_a_nameless_file_that_linkat_names()
    {
        using var m = new TestMount();
        var o = Py("""
            import os
            fd = os.open(".", os.O_TMPFILE | os.O_RDWR, 0o640)
            os.write(fd, b"tmp data")
            print(sorted(os.listdir(".")))
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            assert libc.linkat(-100, b"/proc/self/fd/%d" % fd, -100, b"named", 0x400) == 0, ctypes.get_errno()
            print(oct(os.stat("named").st_mode & 0o777), os.stat("named").st_nlink)
            """, m.MountPoint);
        Assert.Equal("['.lab']\n0o640 1\n", o);
        Assert.Equal("tmp data", File.ReadAllText(m.B("named")));
    }

    [KernelFact]
    public void Rename2_exchange_and_noreplace_errnos()
    {
        using var m = new TestMount();
        File.WriteAllText(m.M("a"), "A");
        File.WriteAllText(m.M("b"), "B");
        Assert.Equal(0, m.Fs.Lookup(in Root, 1, "a"u8, out _));
        Assert.Equal(Lab.Interop.Errno.EEXIST, m.Fs.Rename(in Root, 1, "a"u8, 1, "b"u8, 1));
        Assert.Equal(0, m.Fs.Rename(in Root, 1, "a"u8, 1, "b"u8, 2));
        Assert.Equal("B", File.ReadAllText(m.B("a")));
        Assert.Equal(Lab.Interop.Errno.ENOENT, m.Fs.Rename(in Root, 1, "a"u8, 1, "none"u8, 2));
        Assert.Equal(Lab.Interop.Errno.EINVAL, m.Fs.Rename(in Root, 1, "a"u8, 1, "b"u8, 3)); // both flags
    }

    [KernelFact]
    public void Node_ids_generation_and_inode_numbers_are_stable()
    {
        using var m = new TestMount();
        File.WriteAllText(m.B("s"), "");
        Assert.Equal(0, m.Fs.Lookup(in Root, 1, "s"u8, out var a));
        Assert.Equal(0, m.Fs.Lookup(in Root, 1, "s"u8, out var b));
        Assert.Equal(a.NodeId, b.NodeId);
        Assert.Equal(a.Generation, b.Generation);
        Assert.Equal(a.Attr.Ino, b.Attr.Ino);
        m.Fs.Forget(a.NodeId, 2);
        Assert.Equal(0, m.Fs.Lookup(in Root, 1, "s"u8, out var c));
        Assert.Equal(a.Attr.Ino, c.Attr.Ino); // st_ino is the backing file's, whatever the node id
        Assert.Equal(a.Generation, c.Generation);
        Assert.NotEqual(a.NodeId, c.NodeId);   // node ids are never reused, so generation 0 is enough
        Assert.Equal(0, Syscall.stat(m.B("s"), out var st));
        Assert.Equal(st.st_ino, c.Attr.Ino);
    }

    [KernelFact]
    public void Readdirplus_entries_count_one_lookup_each()
    {
        using var m = new TestMount();
        for (int i = 0; i < 50; i++) File.WriteAllText(m.B($"f{i:D2}"), "");
        Assert.Equal(0, m.Fs.OpenDir(in Root, 1, 0, out var od));
        var buf = new byte[4096];
        var seen = new List<(string Name, ulong Node)>();
        long off = 0;
        while (true)
        {
            var w = new FuseDirWriter(buf, plus: true);
            Assert.Equal(0, m.Fs.ReadDirPlus(in Root, 1, od.Fh, off, ref w));
            if (w.Used == 0) break;
            for (int pos = 0; pos < w.Used;)
            {
                ulong node = BitConverter.ToUInt64(buf, pos);
                int nameLen = (int)BitConverter.ToUInt32(buf, pos + 128 + 16);
                off = (long)BitConverter.ToUInt64(buf, pos + 128 + 8);
                seen.Add((Encoding.UTF8.GetString(buf, pos + 128 + 24, nameLen), node));
                pos += (128 + 24 + nameLen + 7) & ~7;
            }
        }
        m.Fs.ReleaseDir(in Root, 1, od.Fh);
        Assert.Equal(50, seen.Count(s => s.Name.StartsWith('f')));
        Assert.All(seen.Where(s => s.Name.StartsWith('f')), s => Assert.NotEqual(0UL, s.Node));
        Assert.All(seen.Where(s => s.Name is "." or ".." or ".lab"), s => Assert.Equal(0UL, s.Node));
        // Each counted once: one lookup more, then two forgets, and the node is gone (a new id).
        var f0 = seen.First(s => s.Name == "f00").Node;
        Assert.Equal(0, m.Fs.Lookup(in Root, 1, "f00"u8, out var again));
        Assert.Equal(f0, again.NodeId);
        m.Fs.Forget(f0, 2);
        Assert.Equal(0, m.Fs.Lookup(in Root, 1, "f00"u8, out var fresh));
        Assert.NotEqual(f0, fresh.NodeId);
        // And through the kernel: ls -l of the mount lists them all.
        Assert.Equal("50", Sh.Ok("ls -l | grep -c ' f'", m.MountPoint).Trim());
    }

    [KernelFact]
    public void Readdir_stays_consistent_while_files_come_and_go()
    {
        using var m = new TestMount();
        for (int i = 0; i < 100; i++) File.WriteAllText(m.M($"stable{i}"), "");
        using var stop = new CancellationTokenSource();
        var churn = Task.Run(() =>
        {
            int k = 0;
            while (!stop.IsCancellationRequested)
            {
                File.WriteAllText(m.M($"tmp{k % 50}"), "x");
                File.Delete(m.M($"tmp{(k + 25) % 50}"));
                k++;
            }
        });
        try
        {
            for (int round = 0; round < 40; round++)
            {
                var names = Directory.GetFileSystemEntries(m.MountPoint).Select(Path.GetFileName).ToList();
                Assert.Equal(names.Count, names.Distinct().Count()); // no duplicates
                for (int i = 0; i < 100; i++) Assert.Contains($"stable{i}", names);
                Assert.All(names, n => Assert.True(n!.StartsWith("stable") || n.StartsWith("tmp") || n == ".lab", n));
            }
        }
        finally
        {
            stop.Cancel();
            churn.Wait();
        }
        var final = Directory.GetFileSystemEntries(m.MountPoint).Select(Path.GetFileName).Where(n => n != ".lab").Order();
        Assert.Equal(Directory.GetFileSystemEntries(m.Backing).Select(Path.GetFileName).Order(), final);
    }

    [KernelFact]
    public void Many_parallel_opens_read_their_own_files()
    {
        using var m = new TestMount(threads: 4);
        for (int i = 0; i < 16; i++) File.WriteAllText(m.M($"p{i}"), $"content {i}");
        Parallel.For(0, 64, new ParallelOptions { MaxDegreeOfParallelism = 32 }, t =>
        {
            var held = new List<FileStream>();
            try
            {
                for (int k = 0; k < 50; k++)
                {
                    int i = (t + k) % 16;
                    var fs = new FileStream(m.M($"p{i}"), FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 0);
                    held.Add(fs);
                    var buf = new byte[64];
                    int n = fs.Read(buf);
                    Assert.Equal($"content {i}", Encoding.ASCII.GetString(buf, 0, n));
                }
            }
            finally { foreach (var f in held) f.Dispose(); }
        });
    }

    private static int OpenFds() => Directory.GetFileSystemEntries("/proc/self/fd").Length;

    [KernelFact]
    public void No_descriptor_leaks_after_ten_thousand_open_close()
    {
        using var m = new TestMount();
        for (int i = 0; i < 10; i++) File.WriteAllText(m.M($"l{i}"), "x");
        Directory.CreateDirectory(m.M("dir"));
        void Work(int count)
        {
            for (int k = 0; k < count; k++)
            {
                using (var f = new FileStream(m.M($"l{k % 10}"), FileMode.Open, k % 2 == 0 ? FileAccess.Read : FileAccess.ReadWrite, FileShare.ReadWrite, 0))
                    f.ReadByte();
                if (k % 100 == 0) Directory.GetFileSystemEntries(m.M("dir"));
                if (k % 500 == 0) { File.WriteAllText(m.M("churn"), "c"); File.Delete(m.M("churn")); }
            }
        }
        Work(200); // warm up: nodes of the files exist, pools are made
        int before = OpenFds();
        Work(10_000);
        // The kernel's FORGETs of deleted nodes arrive when it drops the dentries.
        for (int i = 0; i < 50 && OpenFds() > before; i++) Thread.Sleep(100);
        int after = OpenFds();
        Assert.True(after <= before + 2, $"{before} descriptors before, {after} after 10,000 open/close");
    }

    [KernelFact]
    public void Truncate_shrinks_the_page_cache_so_a_mapping_past_eof_gets_sigbus()
    {
        using var m = new TestMount();
        File.WriteAllBytes(m.M("m"), Enumerable.Repeat((byte)'q', 4 * 4096).ToArray());
        Assert.Equal(0, Syscall.stat(m.M("m"), out var st));
        var cache = m.Fs.GetCachedFile(st.st_ino)!;
        Assert.Equal(0, cache.LoadPages(0, 4));
        // A child maps the memfd (as a lab MAP_SHARED mapper does), then the file shrinks under it.
        var r = Sh.Run($$"""
            python3 -c '
            import mmap, os, sys, subprocess, signal
            fd = os.open("/proc/{{Environment.ProcessId}}/fd/{{cache.MemfdFd.Number}}", os.O_RDWR)
            mm = mmap.mmap(fd, 4 * 4096, mmap.MAP_SHARED)
            assert mm[3 * 4096] == ord("q")
            subprocess.run(["truncate", "-s", "5000", "{{m.M("m")}}"], check=True)
            sys.stdout.write("%d %d\n" % (mm[4999], mm[5000])); sys.stdout.flush()
            mm[3 * 4096]
            '
            """, m.Root);
        Assert.Equal("113 0\n", r.Out); // inside: the byte; past EOF in the last page: zero
        Assert.Equal(128 + 7, r.Exit); // SIGBUS on the page wholly past EOF
        // And it grows back with zeros, on the mount and in the cache.
        Sh.Ok("truncate -s 16384 m", m.MountPoint);
        var back = File.ReadAllBytes(m.M("m"));
        Assert.All(back[5000..], b => Assert.Equal(0, b));
        var page = new byte[4096];
        Assert.Equal(0, cache.ReadPages(3, 1, page));
        Assert.All(page, b => Assert.Equal(0, b));
    }

    [KernelFact]
    public void Dirty_pages_reach_the_file_on_fsync_and_on_last_close()
    {
        using var m = new TestMount();
        // Made in the backing dir: a handle opened through the mount would be RELEASEd
        // asynchronously by the kernel, and that release may flush our dirty page early.
        File.WriteAllBytes(m.B("d"), new byte[8192]);
        Assert.Equal(0, Syscall.stat(m.M("d"), out var st));
        var cache = m.Fs.GetCachedFile(st.st_ino)!;
        Assert.Equal(0, cache.LoadPages(0, 2));
        void Dirty(long at, string s)
        {
            using (var mem = new FileStream($"/proc/self/fd/{cache.MemfdFd.Number}", FileMode.Open, FileAccess.Write)) { mem.Position = at; mem.Write(Encoding.ASCII.GetBytes(s)); }
            cache.MarkDirty(at / 4096, 1);
        }
        using (var f = new FileStream(m.M("d"), FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite, 0))
        {
            Dirty(0, "fsync");
            Assert.NotEqual((byte)'f', File.ReadAllBytes(m.B("d"))[0]);
            f.Flush(flushToDisk: true);
            Assert.Equal("fsync", Encoding.ASCII.GetString(File.ReadAllBytes(m.B("d")), 0, 5));
            Dirty(4096, "close");
        }
        Assert.Equal("close", Encoding.ASCII.GetString(File.ReadAllBytes(m.B("d")), 4096, 5));
        Assert.False(cache.IsDirty(1));
        Dirty(100, "syncfs");
        Sh.Ok("sync -f d", m.MountPoint);
        Assert.Equal("syncfs", Encoding.ASCII.GetString(File.ReadAllBytes(m.B("d")), 100, 6));
    }

    [KernelFact]
    public void An_external_umount_ends_the_session_cleanly_and_flushes()
    {
        var m = new TestMount();
        try
        {
            File.WriteAllBytes(m.M("f"), new byte[4096]);
            Assert.Equal(0, Syscall.stat(m.M("f"), out var st));
            var cache = m.Fs.GetCachedFile(st.st_ino)!;
            Assert.Equal(0, cache.LoadPages(0, 1));
            using (var mem = new FileStream($"/proc/self/fd/{cache.MemfdFd.Number}", FileMode.Open, FileAccess.Write)) mem.Write("U"u8);
            cache.MarkDirty(0, 1);
            Sh.Ok($"umount {m.MountPoint}", m.Root);     // not through us: the threads read ENODEV
            Assert.True(m.Server.Completion.Wait(10_000));
            Assert.Equal((byte)'U', File.ReadAllBytes(m.B("f"))[0]);
        }
        finally { m.Dispose(); }
    }

    [KernelFact]
    public void Programs_on_the_mount_match_the_same_run_on_a_native_directory()
    {
        using var m = new TestMount();
        var native = Path.Combine(m.Root, "native");
        Directory.CreateDirectory(native);
        // Every step prints what it saw; paths are relative, so both runs print the same.
        const string script = """
            set -e
            mkdir -p tree/a/b tree/c && for i in $(seq 1 200); do echo "line $i needle$((i % 7))" > tree/a/f$i.txt; done
            head -c 300000 /dev/zero | tr '\0' 'z' > tree/c/big && ln -s ../a/f1.txt tree/c/link && chmod 600 tree/a/f2.txt
            git init -q repo && cp -a tree/. repo/ && cd repo && git add -A && git commit -qm one && echo x >> a/f3.txt && git commit -qam two
            git fsck --full --strict 2>&1; git rev-list --count HEAD; git status --porcelain; git ls-files | wc -l; cd ..
            tar cf t.tar tree && mkdir out && tar xf t.tar -C out && diff -r tree out/tree && echo tar-ok
            cmp t.tar <(tar cf - tree) && echo tar-same
            cp -a tree copy && diff -r tree copy && stat -c '%n %a %s' copy/a/f2.txt copy/c/big && readlink copy/c/link
            rg --sort path -c needle3 tree | head -5; rg --sort path --mmap -l needle6 tree | wc -l
            """;
        File.WriteAllText(Path.Combine(m.Root, "progs.sh"), script);
        var a = Sh.Ok($"bash {Path.Combine(m.Root, "progs.sh")} 2>&1", native);
        var b = Sh.Ok($"bash {Path.Combine(m.Root, "progs.sh")} 2>&1", m.MountPoint);
        Assert.Equal(a, b);
        Assert.Contains("tar-ok", b);
    }

    [KernelFact]
    public void Sqlite3_hundred_thousand_rows_with_and_without_mmap_match_native()
    {
        using var m = new TestMount();
        var native = Path.Combine(m.Root, "native");
        Directory.CreateDirectory(native);
        foreach (var mmap in new[] { 0, 268435456 })
        {
            string sql = $"PRAGMA mmap_size={mmap}; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, w BLOB);"
                + " WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<100000)"
                + " INSERT INTO t SELECT x, printf('%08d', x * 7919 % 100003), zeroblob(x % 300) FROM c;"
                + " CREATE INDEX tv ON t(v); DELETE FROM t WHERE id % 5 = 0; UPDATE t SET v = v || 'u' WHERE id % 3 = 0;"
                + " SELECT count(*), sum(length(v)), sum(length(w)), min(v), max(v) FROM t; PRAGMA integrity_check;";
            var db = $"m{mmap}.db";
            var x = Sh.Ok($"sqlite3 {db} \"{sql}\"", native);
            var y = Sh.Ok($"sqlite3 {db} \"{sql}\"", m.MountPoint);
            Assert.Equal(x, y);
            Assert.EndsWith("ok\n", y);
            Assert.Equal("ok\n", Sh.Ok($"sqlite3 {db} 'PRAGMA integrity_check;'", m.Backing));
        }
    }
}
