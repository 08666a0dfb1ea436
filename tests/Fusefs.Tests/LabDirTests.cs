using Xunit;

namespace Lab.Tests.Fusefs;

public class LabDirTests
{
    [KernelFact]
    public void Lab_dir_is_virtual_and_hides_a_backing_one()
    {
        using var m = new TestMount();
        Directory.CreateDirectory(m.B(".lab"));
        File.WriteAllText(m.B(".lab/secret"), "hidden");
        File.WriteAllText(m.B("visible"), "v");
        var root = Sh.Ok("ls -a", m.MountPoint).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(1, root.Count(n => n == ".lab"));
        Assert.Contains("visible", root);
        var lab = Sh.Ok("ls .lab", m.MountPoint).Split('\n', StringSplitOptions.RemoveEmptyEntries);
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
    public void Lab_dir_is_read_only()
    {
        using var m = new TestMount();
        foreach (var cmd in new[] { "echo x > .lab/stats", "touch .lab/new", "mkdir .lab/d", "rm -f .lab/stats",
                                    "echo y > f && mv f .lab/f", "mv .lab gone", "rmdir .lab", "ln -s x .lab/l" })
            Assert.NotEqual(0, Sh.Run(cmd, m.MountPoint).Exit);
        Assert.True(Directory.Exists(m.M(".lab")));
        Assert.True(File.Exists(m.M("f")));
    }
}
