namespace Lab.Tests;

/// <summary>
/// Issue 9 item 14: a MAP_SHARED mapping of a lab file obeys `--resident-limit`. The pageout
/// removes shared pages from the process like private ones; the page stays in the file's
/// page cache (the memfd), and the process's next touch must come back through the design's
/// fault handler, as in the seeds a page the pageout removed from the pmap is reached again
/// only through vm_fault's pmap_enter (FreeBSD vm_fault.c, seed 000 line 957; prefaulted
/// neighbours through pmap_enter_quick, line 1157).
/// </summary>
public sealed class SharedMappingLimitTests(ITestOutputHelper output)
{
    const int Pages = 32768;          // 128 MiB
    const int LimitPages = 8192;      // --resident-limit 32M
    // The pageout evicts in batches of 256 after a program goes over: a batch or two, plus
    // the 2 MiB between samples.
    const int SlackPages = 2 * 256 + 512;

    /// <summary>Two read passes (each page's first word checked), then a write pass; the peak
    /// RssShmem (the memfd pages mapped in this process) sampled every 256 pages.</summary>
    const string Program = """
        import mmap, os, sys
        fd = os.open(sys.argv[1], os.O_RDWR)
        n = os.fstat(fd).st_size // 4096
        mm = mmap.mmap(fd, n * 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        def shmem_kib():
            for l in open('/proc/self/status'):
                if l.startswith('RssShmem:'): return int(l.split()[1])
        peak = bad = 0
        for rnd in range(2):
            for i in range(n):
                if mm[i * 4096:i * 4096 + 8] != b'P%07d' % i: bad += 1
                if i % 256 == 0: peak = max(peak, shmem_kib())
        for i in range(n):
            mm[i * 4096:i * 4096 + 8] = b'W%07d' % i
            if i % 256 == 0: peak = max(peak, shmem_kib())
        print("bad", bad, "peak_kib", peak, flush=True)
        """;

    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void SharedFileMappingStaysUnderTheLimit_AndEveryRetouchIsADesignFault(string vm)
    {
        using var m = new LabMount(vm);
        using (var f = File.Create(m.B("f.bin")))
            for (int i = 0; i < Pages; i++)
            {
                var page = new byte[4096];
                for (int k = 0; k < 512; k++) System.Text.Encoding.ASCII.GetBytes($"P{i:D7}").CopyTo(page, k * 8);
                f.Write(page);
            }
        var r = Sh.Run(Repo.Lab, new[] { "run", "--mount", m.Mount, "--resident-limit", "32M", "--stats", "--", Repo.Python, "-c", Program, m.M("f.bin") },
            timeoutMs: 600_000);
        output.WriteLine(r.ToString());
        Assert.True(r.ExitCode == 0, $"{r}\n{m.DaemonLog}");
        var words = r.Stdout.Trim().Split(' ');
        Assert.Equal("bad", words[0]);
        Assert.Equal(0, int.Parse(words[1]));
        long peakPages = long.Parse(words[3]) / 4;
        Assert.True(peakPages <= LimitPages + SlackPages, $"the shared mapping reached {peakPages} resident pages under a limit of {LimitPages}");

        var c = LabMount.ParseCounters(r.Stderr);
        // The second read pass finds at most the limit's worth of pages still mapped: every
        // other page, and the write pass's, are installed again by the design.
        long installed = LabMount.Get(c, "pages_installed");
        Assert.True(installed >= 2L * Pages - LimitPages - SlackPages, $"pages_installed {installed}: retouched shared pages came back without a fault\n{r.Stderr}");
        // The writes reached the file (paged out, or written back at exit).
        var bytes = File.ReadAllBytes(m.B("f.bin"));
        for (int i = 0; i < Pages; i++)
            Assert.True(bytes.AsSpan(i * 4096, 8).SequenceEqual(System.Text.Encoding.ASCII.GetBytes($"W{i:D7}")), $"page {i} of the file was not written back");
    }
}
