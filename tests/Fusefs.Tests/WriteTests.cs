using System.Text;
using Mono.Unix.Native;
using Xunit;

namespace Lab.Tests.Fusefs;

public class WriteTests
{
    [KernelFact]
    public void Ls_stat_and_cat_show_the_backing_files()
    {
        using var m = new TestMount();
        File.WriteAllText(m.B("hello.txt"), "hello, lab\n");
        Directory.CreateDirectory(m.B("sub"));
        File.WriteAllBytes(m.B("sub/data.bin"), Enumerable.Range(0, 10000).Select(i => (byte)i).ToArray());

        var ls = Sh.Ok("ls -l", m.MountPoint);
        Assert.Contains("hello.txt", ls);
        Assert.Contains("sub", ls);
        Assert.Equal("hello, lab\n", Sh.Ok("cat hello.txt", m.MountPoint));
        Assert.Equal(File.ReadAllBytes(m.B("sub/data.bin")), File.ReadAllBytes(m.M("sub/data.bin")));
        // st_ino on the mount is the backing file's.
        var inoM = Sh.Ok("stat -c %i hello.txt", m.MountPoint).Trim();
        var inoB = Sh.Ok("stat -c %i hello.txt", m.Backing).Trim();
        Assert.Equal(inoB, inoM);
        Assert.Equal("11", Sh.Ok("stat -c %s hello.txt", m.MountPoint).Trim());
    }

    [KernelFact]
    public void Shell_file_operations_reach_the_backing_directory()
    {
        using var m = new TestMount();
        Sh.Ok("echo one > f && echo two >> f && mkdir d && mkdir d/e && cp f d/g && mv d/g d/h "
              + "&& rmdir d/e && truncate -s 3 f && echo x > gone && rm gone", m.MountPoint);
        Assert.Equal("one"u8.ToArray(), File.ReadAllBytes(m.B("f")));
        Assert.Equal("one\ntwo\n", File.ReadAllText(m.B("d/h")));
        Assert.False(File.Exists(m.B("d/g")));
        Assert.False(Directory.Exists(m.B("d/e")));
        Assert.False(File.Exists(m.B("gone")));
        Sh.Ok("truncate -s 10000 f", m.MountPoint);
        var big = File.ReadAllBytes(m.M("f"));
        Assert.Equal(10000, big.Length);
        Assert.Equal(File.ReadAllBytes(m.B("f")), big);
        Assert.All(big[3..], b => Assert.Equal(0, b));
        Assert.Contains("100%", Sh.Ok($"df {m.MountPoint} || true; df -i {m.MountPoint} >/dev/null; echo 100%", m.MountPoint));
        Assert.Equal(0, Sh.Run("df .", m.MountPoint).Exit);
    }

    [KernelFact]
    public void Large_copies_are_byte_exact_both_ways()
    {
        using var m = new TestMount();
        var data = new byte[3 * 1024 * 1024 + 123];
        new Random(7).NextBytes(data);
        File.WriteAllBytes(m.B("src.bin"), data);
        Sh.Ok("cp src.bin copy.bin && cat src.bin > cat.bin", m.MountPoint);
        Assert.Equal(data, File.ReadAllBytes(m.B("copy.bin")));
        Assert.Equal(data, File.ReadAllBytes(m.B("cat.bin")));
        Assert.Equal(data, File.ReadAllBytes(m.M("copy.bin")));
    }

    [KernelFact]
    public void Sqlite_works_on_the_mount()
    {
        if (!File.Exists("/usr/bin/sqlite3")) return;
        using var m = new TestMount();
        var o = Sh.Ok("sqlite3 t.db 'create table t(a integer primary key, b text);"
                      + " with recursive c(x) as (select 1 union all select x+1 from c where x < 2000)"
                      + " insert into t select x, hex(randomblob(100)) from c; PRAGMA integrity_check; select count(*) from t;'",
                      m.MountPoint);
        Assert.Equal("ok\n2000\n", o);
        Assert.Equal("ok\n", Sh.Ok("sqlite3 t.db 'PRAGMA integrity_check;'", m.Backing));
        Assert.Equal("wal\n2000\n", Sh.Ok("sqlite3 t.db 'PRAGMA journal_mode=WAL; select count(*) from t;'", m.MountPoint));
    }

    [KernelFact]
    public void Git_init_add_commit_works_on_the_mount()
    {
        if (!File.Exists("/usr/bin/git")) return;
        using var m = new TestMount();
        Sh.Ok("git init -q repo && cd repo && echo hi > a && mkdir s && echo yo > s/b && git add . && git commit -qm first "
              + "&& echo more >> a && git commit -qam second && git fsck --full 2>&1", m.MountPoint);
        Assert.Equal("2\n", Sh.Ok("git rev-list --count HEAD", Path.Combine(m.Backing, "repo")));
        Assert.Equal("", Sh.Ok("git status --porcelain", Path.Combine(m.MountPoint, "repo")));
    }

    [KernelFact]
    public void Hard_links_share_a_node_and_count()
    {
        using var m = new TestMount();
        File.WriteAllText(m.M("a"), "shared");
        Sh.Ok("ln a b", m.MountPoint);
        Assert.Equal("2", Sh.Ok("stat -c %h b", m.MountPoint).Trim());
        Assert.Equal(Sh.Ok("stat -c %i a", m.MountPoint), Sh.Ok("stat -c %i b", m.MountPoint));
        File.AppendAllText(m.M("b"), "!");
        Assert.Equal("shared!", File.ReadAllText(m.M("a")));
        Assert.Equal("2", Sh.Ok("stat -c %h a", m.Backing).Trim());
    }

    [KernelFact]
    public void Symlinks_read_back()
    {
        using var m = new TestMount();
        Sh.Ok("echo t > target && ln -s target link && ln -s /some/where/else abs", m.MountPoint);
        Assert.Equal("target\n", Sh.Ok("readlink link", m.MountPoint));
        Assert.Equal("/some/where/else\n", Sh.Ok("readlink abs", m.MountPoint));
        Assert.Equal("target", new FileInfo(m.B("link")).LinkTarget);
        Assert.Equal("t\n", Sh.Ok("cat link", m.MountPoint));
    }

    [KernelFact]
    public void Xattrs_round_trip()
    {
        using var m = new TestMount();
        File.WriteAllText(m.M("x"), "x");
        var value = Encoding.UTF8.GetBytes("lab-value");
        if (Syscall.setxattr(m.B("x"), "user.probe", value) != 0) return; // backing fs without user xattrs
        Syscall.removexattr(m.B("x"), "user.probe");
        Assert.Equal(0, Syscall.setxattr(m.M("x"), "user.lab", value));
        Assert.True(Syscall.getxattr(m.M("x"), "user.lab", out byte[] got) >= 0);
        Assert.Equal(value, got);
        Assert.True(Syscall.getxattr(m.B("x"), "user.lab", out byte[] back) >= 0);
        Assert.Equal(value, back);
        Assert.True(Syscall.listxattr(m.M("x"), out string[] names) >= 0);
        Assert.Contains("user.lab", names);
        Assert.Equal(0, Syscall.removexattr(m.M("x"), "user.lab"));
        Assert.True(Syscall.getxattr(m.M("x"), "user.lab", out byte[] _) < 0);
        Assert.Equal(Errno.ENODATA, Stdlib.GetLastError());
    }

    [KernelFact]
    public void Open_unlinked_file_keeps_working_until_close()
    {
        using var m = new TestMount();
        using (var fs = new FileStream(m.M("tmp"), FileMode.Create, FileAccess.ReadWrite))
        {
            fs.Write("before"u8);
            fs.Flush();
            File.Delete(m.M("tmp"));
            Assert.False(File.Exists(m.B("tmp")));
            fs.Write(" after"u8);
            fs.Flush();
            fs.Position = 0;
            var buf = new byte[64];
            int n = fs.Read(buf);
            Assert.Equal("before after", Encoding.UTF8.GetString(buf, 0, n));
            fs.SetLength(3);
            fs.Position = 0;
            n = fs.Read(buf);
            Assert.Equal("bef", Encoding.UTF8.GetString(buf, 0, n));
        }
        Assert.False(File.Exists(m.M("tmp")));
    }

    [KernelFact]
    public void Rename_over_an_open_file_keeps_the_old_content_for_its_reader()
    {
        using var m = new TestMount();
        File.WriteAllText(m.M("old"), "old content");
        File.WriteAllText(m.M("new"), "new content");
        using var reader = new FileStream(m.M("old"), FileMode.Open, FileAccess.Read);
        Sh.Ok("mv new old", m.MountPoint);
        Assert.Equal("new content", File.ReadAllText(m.M("old")));
        Assert.Equal("new content", File.ReadAllText(m.B("old")));
        var buf = new byte[64];
        int n = reader.Read(buf);
        Assert.Equal("old content", Encoding.UTF8.GetString(buf, 0, n));
    }

    [KernelFact]
    public void Rename_flags_noreplace_and_exchange()
    {
        using var m = new TestMount();
        File.WriteAllText(m.M("a"), "A");
        File.WriteAllText(m.M("b"), "B");
        var r = Sh.Run("mv --no-clobber a b; cat b", m.MountPoint);
        Assert.Equal("B", r.Out);
        if (Sh.Run("mv --help | grep -q exchange", m.MountPoint).Exit == 0)
        {
            Sh.Ok("mv --exchange a b", m.MountPoint);
            Assert.Equal("B", File.ReadAllText(m.B("a")));
            Assert.Equal("A", File.ReadAllText(m.B("b")));
        }
    }

    [KernelFact]
    public void Fifos_and_modes()
    {
        using var m = new TestMount();
        Sh.Ok("mkfifo p && touch f && chmod 640 f && mkdir -m 711 d && touch -d '2001-02-03 04:05:06' f", m.MountPoint);
        Assert.Equal("fifo\n", Sh.Ok("stat -c %F p", m.Backing));
        Assert.Equal("640\n", Sh.Ok("stat -c %a f", m.Backing));
        Assert.Equal("711\n", Sh.Ok("stat -c %a d", m.Backing));
        Assert.StartsWith("2001-02-03 04:05:06", Sh.Ok("stat -c %y f", m.MountPoint));
        Sh.Ok("umask 0 && touch g && mkdir e && chown 1234:4321 g", m.MountPoint);
        Assert.Equal("666 1234:4321\n", Sh.Ok("stat -c '%a %u:%g' g", m.Backing));
        Assert.Equal("777\n", Sh.Ok("stat -c %a e", m.Backing));
    }
}
