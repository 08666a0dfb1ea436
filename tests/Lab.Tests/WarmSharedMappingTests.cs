namespace Lab.Tests;

/// <summary>
/// A warm page cache does not let a shared lab mapping bypass the design: each process's first
/// touch of a page of a MAP_SHARED mapping is a fault the design resolves (minor-fault
/// registration, UFFDIO_CONTINUE), which maps the page and at most the neighbours it prefaults:
/// FreeBSD 4 behind and 4 ahead (000: 108–109 PFBAK/PFFOR, 387 on the soft fast path), DragonFly
/// the lab's 4/4 for its machine-dependent pmap_prefault (002: 368; lab/Vm/README.md "Prefault"),
/// UVM 3 behind and 4 ahead under NORMAL advice (001: 171–172; 003: 159–160). So a scan takes at
/// least one fault per 9 pages.
/// </summary>
public sealed class WarmSharedMappingTests
{
    const int Pages = 4096; // 16 MiB

    // argv[2] == "touch": read one byte of every page; otherwise map and touch nothing (the baseline
    // that counts the program's own faults: interpreter, heap).
    const string Program = """
        import mmap, os, sys
        fd = os.open(sys.argv[1], os.O_RDONLY)
        mm = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)
        s = 0
        if sys.argv[2] == "touch":
            for i in range(len(mm) // 4096):
                s += mm[i * 4096]
        print(s if sys.argv[2] == "touch" else "none")
        """;

    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void WarmSharedMapping_TakesAFaultPerNinePagesAtLeast(string vm)
    {
        using var m = new LabMount(vm);
        var data = new byte[Pages * 4096];
        for (int i = 0; i < Pages; i++) data[i * 4096] = (byte)(i % 251);
        File.WriteAllBytes(m.B("shared16"), data);
        var sum = Enumerable.Range(0, Pages).Sum(i => (long)(i % 251)).ToString();
        // The first run fills the lab's page cache; the next two are measured on a warm cache.
        var (warm, _) = m.RunCounted(Repo.Python, "-c", Program, m.M("shared16"), "touch");
        Assert.True(warm.ExitCode == 0 && warm.Stdout.Trim() == sum, warm.ToString());
        var (r, c) = m.RunCounted(Repo.Python, "-c", Program, m.M("shared16"), "touch");
        Assert.True(r.ExitCode == 0 && r.Stdout.Trim() == sum, r.ToString());
        var (b, cb) = m.RunCounted(Repo.Python, "-c", Program, m.M("shared16"), "none");
        Assert.True(b.ExitCode == 0 && b.Stdout.Trim() == "none", b.ToString());
        long scan = LabMount.Get(c, "fault_count") - LabMount.Get(cb, "fault_count");
        Assert.True(scan >= Pages / 9, $"the scan of a warm {Pages}-page shared mapping took {scan} faults\n{r.Stderr}\nbaseline:\n{b.Stderr}");
        // Warm: nothing was read from the backing file for the scan.
        Assert.Equal(LabMount.Get(cb, "pager_pages"), LabMount.Get(c, "pager_pages"));
    }
}
