using System.Text;
using Lab.Fusefs;
using Lab.Interop;
using Xunit;

namespace Lab.Tests.Fusefs;

public class LabDirTests
{
    private static readonly FuseContext Caller = new(1, 0, 0, 0);

    private static void NestedTree(FakeLab lab)
    {
        lab.Dirs["processes"] = ["1/", "22/"];
        lab.Dirs["processes/1"] = ["maps", "status"];
        lab.Dirs["processes/22"] = ["maps"];
        lab.Dirs["objects"] = ["7"];
        lab.Dirs[""] = ["stats", "processes/", "objects/"];
    }

    private static string[] Lines(string s) => s.Split('\n', StringSplitOptions.RemoveEmptyEntries);

    [KernelFact]
    public void Lab_dir_is_virtual_and_hides_a_backing_one()
    {
        using var m = new TestMount();
        Directory.CreateDirectory(m.B(".lab"));
        File.WriteAllText(m.B(".lab/secret"), "hidden");
        File.WriteAllText(m.B("visible"), "v");
        var root = Lines(Sh.Ok("ls -a", m.MountPoint));
        Assert.Equal(1, root.Count(n => n == ".lab"));
        Assert.Contains("visible", root);
        var lab = Lines(Sh.Ok("ls .lab", m.MountPoint));
        Assert.Equal(new[] { "control", "maps", "stats" }, lab.OrderBy(x => x, StringComparer.Ordinal).ToArray());
        Assert.False(File.Exists(m.M(".lab/secret")));
    }

    [KernelFact]
    public void Stats_is_rendered_per_open_and_control_links_to_the_socket()
    {
        using var m = new TestMount();
        var text = Sh.Ok("cat .lab/stats", m.MountPoint);
        Assert.Equal($"stats: v_vm_faults 42\nrender {m.Lab.Renders}\n", text);
        int before = m.Lab.Renders;
        Sh.Ok("cat .lab/stats >/dev/null", m.MountPoint);
        Assert.Equal(before + 1, m.Lab.Renders);
        Assert.Equal(m.Lab.ControlSocketPath + "\n", Sh.Ok("readlink .lab/control", m.MountPoint));
        Assert.Equal("444\n", Sh.Ok("stat -c %a .lab/stats", m.MountPoint));
    }

    [KernelFact]
    public void Nested_dirs_are_listed_and_their_files_rendered_per_open()
    {
        using var m = new TestMount();
        NestedTree(m.Lab);
        var ls = Sh.Ok("ls -R .lab", m.MountPoint);
        Assert.Equal(".lab:\ncontrol\nobjects\nprocesses\nstats\n\n.lab/objects:\n7\n\n.lab/processes:\n1\n22\n\n"
                     + ".lab/processes/1:\nmaps\nstatus\n\n.lab/processes/22:\nmaps\n", ls);
        Assert.Equal("555 2 directory\n", Sh.Ok("stat -c '%a %h %F' .lab/processes/1", m.MountPoint));
        Assert.Equal("444 1 0 regular empty file\n", Sh.Ok("stat -c '%a %h %s %F' .lab/processes/1/maps", m.MountPoint));
        Assert.Equal("symbolic link\n", Sh.Ok("stat -c %F .lab/control", m.MountPoint));
        // find walks with stat and readdir: every name found is a node that resolves.
        Assert.Equal(".lab\n.lab/control\n.lab/objects\n.lab/objects/7\n.lab/processes\n.lab/processes/1\n.lab/processes/1/maps\n"
                     + ".lab/processes/1/status\n.lab/processes/22\n.lab/processes/22/maps\n.lab/stats\n",
                     Sh.Ok("find .lab | sort", m.MountPoint));

        var first = Sh.Ok("cat .lab/processes/1/maps", m.MountPoint);
        int r1 = m.Lab.Renders;
        Assert.Equal($"processes/1/maps: v_vm_faults 42\nrender {r1}\n", first);
        // One open renders once, however small the reads; the next open sees new content.
        var second = Sh.Ok("dd if=.lab/processes/1/maps bs=3 status=none", m.MountPoint);
        Assert.Equal(r1 + 1, m.Lab.Renders);
        Assert.Equal($"processes/1/maps: v_vm_faults 42\nrender {r1 + 1}\n", second);
        Assert.Equal("objects/7: v_vm_faults 42\n", Lines(Sh.Ok("cat .lab/objects/7", m.MountPoint))[0] + "\n");

        // The tree changes while mounted: a new process appears, listed and readable at once.
        m.Lab.Dirs["processes/333"] = ["maps"];
        m.Lab.Dirs["processes"] = ["1/", "22/", "333/"];
        Assert.Equal("1\n22\n333\n", Sh.Ok("ls .lab/processes", m.MountPoint));
        Assert.StartsWith("processes/333/maps: ", Sh.Ok("cat .lab/processes/333/maps", m.MountPoint));
    }

    [KernelFact]
    public void A_directory_that_disappears_gives_ENOENT()
    {
        using var m = new TestMount();
        NestedTree(m.Lab);
        // Process 1 exits once its maps were read: the shell's cwd still holds the looked-up node.
        m.Lab.Rendered = path =>
        {
            if (path != "processes/1/maps") return;
            m.Lab.Dirs["processes"] = ["22/"];
            m.Lab.Dirs.TryRemove("processes/1", out _);
        };
        var r = Sh.Run("cd .lab/processes/1 && cat maps >/dev/null && echo read; ls .; echo ls=$?; cat maps; echo cat=$?", m.MountPoint);
        Assert.Contains("read\n", r.Out);
        Assert.Contains("ls=2\n", r.Out);
        Assert.Contains("cat=1\n", r.Out);
        Assert.Equal(2, Lines(r.Err).Count(l => l.Contains("No such file or directory")));
        Assert.NotEqual(0, Sh.Run("ls .lab/processes/1", m.MountPoint).Exit);
        Assert.NotEqual(0, Sh.Run("stat .lab/processes/1/maps", m.MountPoint).Exit);
        Assert.Equal("22\n", Sh.Ok("ls .lab/processes", m.MountPoint));
    }

    [KernelFact]
    public void Lab_dir_is_read_only()
    {
        using var m = new TestMount();
        NestedTree(m.Lab);
        foreach (var cmd in new[] { "echo x > .lab/stats", "touch .lab/new", "mkdir .lab/d", "rm -f .lab/stats",
                                    "echo y > f && mv f .lab/f", "mv .lab gone", "rmdir .lab", "ln -s x .lab/l",
                                    "echo x > .lab/processes/1/maps", "echo x >> .lab/processes/1/maps",
                                    "truncate -s 0 .lab/processes/1/maps", "touch .lab/processes/1/new",
                                    "mkdir .lab/processes/1/d", "rm -f .lab/processes/1/maps", "rmdir .lab/processes/22",
                                    "mv .lab/processes/1 .lab/processes/9", "mv .lab/processes/1/maps f2",
                                    "ln .lab/processes/1/maps hard", "chmod 777 .lab/processes/1/maps",
                                    "/usr/bin/python3 -c 'import os; os.setxattr(\".lab/processes/1/maps\", \"user.x\", b\"1\")'" })
        {
            var r = Sh.Run(cmd, m.MountPoint);
            Assert.True(r.Exit != 0, $"`{cmd}` succeeded");
            Assert.DoesNotContain("No such file", r.Err); // refused, not missed
        }
        Assert.True(Directory.Exists(m.M(".lab")));
        Assert.True(File.Exists(m.M("f")));
        Assert.Equal("maps\nstatus\n", Sh.Ok("ls .lab/processes/1", m.MountPoint));
        Assert.False(File.Exists(m.M("hard")) || File.Exists(m.M("f2")));
    }

    // Without a kernel: the node table the kernel's lookups and forgets drive.
    [Fact]
    public void Virtual_nodes_are_stable_while_looked_up_and_refuse_writes()
    {
        var dir = Path.Combine(Path.GetTempPath(), "fusefs-labids-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(dir);
        var lab = new FakeLab();
        NestedTree(lab);
        try
        {
            using var fs = new LabFileSystem(dir, lab);
            Assert.Equal(0, fs.Lookup(in Caller, 1, ".lab"u8, out var labDir));
            Assert.Equal(0, fs.Lookup(in Caller, labDir.NodeId, "processes"u8, out var procs));
            Assert.Equal(0, fs.Lookup(in Caller, procs.NodeId, "1"u8, out var p1));
            Assert.Equal(0, fs.Lookup(in Caller, p1.NodeId, "maps"u8, out var maps));
            Assert.Equal(0, fs.Lookup(in Caller, p1.NodeId, "maps"u8, out var again));
            Assert.Equal(maps.NodeId, again.NodeId);
            Assert.True(maps.NodeId < 1UL << 32 && maps.NodeId >= 16); // the virtual range, below every backing node
            Assert.Equal(0x416Du, p1.Attr.Mode);   // S_IFDIR | 0555
            Assert.Equal(0x8124u, maps.Attr.Mode); // S_IFREG | 0444
            Assert.Equal(Errno.ENOENT, fs.Lookup(in Caller, p1.NodeId, "nope"u8, out _));
            Assert.Equal(Errno.ENOTDIR, fs.Lookup(in Caller, maps.NodeId, "x"u8, out _));

            // Writes of every kind are refused.
            Assert.Equal(Errno.EACCES, fs.Open(in Caller, maps.NodeId, 1 /*O_WRONLY*/, out _));
            Assert.Equal(Errno.EACCES, fs.Create(in Caller, p1.NodeId, "n"u8, 0x41, 0x1A4, out _, out _));
            Assert.Equal(Errno.EACCES, fs.Unlink(in Caller, p1.NodeId, "maps"u8));
            Assert.Equal(Errno.EACCES, fs.Mkdir(in Caller, p1.NodeId, "d"u8, 0x1ED, out _));
            Assert.Equal(Errno.EACCES, fs.Rename(in Caller, p1.NodeId, "maps"u8, 1, "m"u8, 0));
            Assert.Equal(Errno.EPERM, fs.SetAttr(in Caller, maps.NodeId, new FuseSetAttrIn { Valid = FuseFattr.Mode, Mode = 0x1FF }, out _));
            Assert.Equal(Errno.EPERM, fs.SetXattr(in Caller, maps.NodeId, "user.x"u8, "1"u8, 0));
            Assert.Equal(Errno.EACCES, fs.Access(in Caller, maps.NodeId, 2));

            // Forgotten fully, the id goes; a later lookup of the path gets a fresh one.
            fs.Forget(maps.NodeId, 2);
            Assert.Equal(Errno.ENOENT, fs.GetAttr(in Caller, maps.NodeId, null, out _));
            Assert.Equal(0, fs.Lookup(in Caller, p1.NodeId, "maps"u8, out var fresh));
            Assert.NotEqual(maps.NodeId, fresh.NodeId);

            // Gone between lookup and open: ENOENT for the file and for its directory.
            lab.Dirs["processes/1"] = ["status"];
            Assert.Equal(Errno.ENOENT, fs.Open(in Caller, fresh.NodeId, 0, out _));
            lab.Dirs.TryRemove("processes/1", out _);
            Assert.Equal(Errno.ENOENT, fs.OpenDir(in Caller, p1.NodeId, 0, out _));
            Assert.Equal(Errno.ENOENT, fs.Lookup(in Caller, p1.NodeId, "status"u8, out _));

            // A path that becomes a directory gets a new node (the kernel refuses a node changing type).
            lab.Dirs["processes/1"] = ["maps/"];
            lab.Dirs["processes/1/maps"] = [];
            Assert.Equal(0, fs.Lookup(in Caller, p1.NodeId, "maps"u8, out var asDir));
            Assert.NotEqual(fresh.NodeId, asDir.NodeId);
            Assert.Equal(0x4000u, asDir.Attr.Mode & 0xF000);
            Assert.Equal(0, fs.OpenDir(in Caller, asDir.NodeId, 0, out var dh));
            fs.ReleaseDir(in Caller, asDir.NodeId, dh.Fh);
            Assert.Equal(0, fs.GetAttr(in Caller, fresh.NodeId, null, out var old)); // still held by the kernel
            Assert.Equal(0x8000u, old.Attr.Mode & 0xF000);
        }
        finally { Directory.Delete(dir, true); }
    }
}
