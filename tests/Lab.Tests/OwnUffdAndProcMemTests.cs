using System.Text.RegularExpressions;
using Xunit;
using Xunit.Abstractions;

namespace Lab.Tests;

/// <summary>
/// Programs that use userfaultfd themselves (their registration wins over the lab's), and
/// programs that read and write their own memory through /proc/self/mem (FOLL_FORCE) and
/// process_vm_writev: the same bytes as a native run, in every design.
/// </summary>
public sealed class OwnUffdAndProcMemTests(ITestOutputHelper output)
{
    const string OwnUffdOutput = "anon: pages 16 faults 15 ok\nheap: faults N ok\nfile: Invalid argument\n";

    static byte[] Pattern(int n)
    {
        var b = new byte[n];
        for (int i = 0; i < n; i++) b[i] = (byte)(i * 13 + 1);
        return b;
    }

    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void AProgramsOwnUserfaultfdTakesItsRangesFromTheLab(string vm)
    {
        using var m = new LabMount(vm);
        File.WriteAllBytes(m.B("two.dat"), Pattern(4 * 4096));
        // Natively (on the same FUSE mount, without the lab) the program serves its own faults,
        // and the kernel refuses to register a FUSE file mapping.
        var native = Sh.Run(Repo.Prog("ownuffd"), new[] { m.M("two.dat") });
        Assert.True(native.ExitCode == 0, native.ToString());
        Assert.Equal(OwnUffdOutput, native.Stdout);

        var (r, c) = m.RunCounted(Repo.Prog("ownuffd"), m.M("two.dat"));
        output.WriteLine(r.ToString());
        Assert.True(r.ExitCode == 0, r.ToString() + m.DaemonLog);
        Assert.Equal(OwnUffdOutput, r.Stdout);
        // Both ranges were lab memory (anonymous mmap, a malloc block of 2 MiB) and left it whole.
        long registered = long.Parse(Regex.Match(r.Stderr, @"registered (\d+)").Groups[1].Value);
        Assert.Equal(2, LabMount.Get(c, "uffd_released_ranges"));
        Assert.Equal(registered, LabMount.Get(c, "uffd_released_pages"));
        Assert.Equal(0, LabMount.Get(c, "lookup_miss"));
        Assert.Equal(0, LabMount.Get(c, "internal_errors"));
        // Logged once per process, not once per range.
        Assert.Single(Regex.Matches(m.DaemonLog, "with its own userfaultfd"));
        // The lab file mapping stayed lab memory and its file is untouched.
        Assert.Equal(Pattern(4 * 4096), File.ReadAllBytes(m.B("two.dat")));
    }
}
