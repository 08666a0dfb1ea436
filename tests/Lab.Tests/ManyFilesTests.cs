using System.Text.RegularExpressions;

namespace Lab.Tests;

/// <summary>
/// A tree with many more files than the daemon may hold descriptors (issue 12 item 1): the daemon runs
/// under RLIMIT_NOFILE 256 and serves 4,000 files in 20 directories, which the kernel keeps looked up
/// all the while. Every create succeeds, every name is there (readdir complete, each file's bytes its
/// own), renames and removes succeed. The old daemon held a descriptor per remembered inode: its
/// creates began failing with EMFILE after about 160 files (though the files were made).
/// </summary>
public sealed class ManyFilesTests(ITestOutputHelper output)
{
    private const int Limit = 256, Dirs = 20, PerDir = 200;

    [KernelFact]
    public void A_tree_larger_than_the_daemons_descriptor_limit_is_served_whole()
    {
        using var m = new LabMount(Limit, "freebsd");
        var limits = File.ReadAllText($"/proc/{m.Daemon.Id}/limits");
        Assert.Matches(new Regex($@"Max open files\s+{Limit}\s+{Limit}\s"), limits);

        var expected = new SortedDictionary<string, string>(StringComparer.Ordinal);
        var failures = new List<string>();
        for (int d = 0; d < Dirs; d++)
        {
            string dir = $"d{d:D2}";
            Try(failures, () => Directory.CreateDirectory(m.M(dir)), "mkdir " + dir);
            for (int f = 0; f < PerDir; f++)
            {
                string rel = $"{dir}/f{f:D3}";
                Try(failures, () => File.WriteAllText(m.M(rel), rel + "\n"), "create " + rel);
                expected[rel] = rel + "\n";
            }
        }
        Assert.True(failures.Count == 0, $"{failures.Count} creates failed; first: {failures.FirstOrDefault()}");
        Assert.Equal(Dirs * PerDir, Directory.EnumerateFiles(m.Backing, "*", SearchOption.AllDirectories).Count());
        Walk(m, expected);

        // Renames: each file to a new name, every other one into the next directory.
        var renamed = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (var (rel, content) in expected)
        {
            int d = int.Parse(rel[1..3]), f = int.Parse(rel[5..8]);
            string to = f % 2 == 0 ? $"d{d:D2}/g{f:D3}" : $"d{(d + 1) % Dirs:D2}/h{d:D2}-{f:D3}";
            Try(failures, () => File.Move(m.M(rel), m.M(to)), $"rename {rel} {to}");
            renamed[to] = content;
        }
        Assert.True(failures.Count == 0, $"{failures.Count} renames failed; first: {failures.FirstOrDefault()}");
        Walk(m, renamed);

        foreach (var rel in renamed.Keys) Try(failures, () => File.Delete(m.M(rel)), "unlink " + rel);
        for (int d = 0; d < Dirs; d++) Try(failures, () => Directory.Delete(m.M($"d{d:D2}")), $"rmdir d{d:D2}");
        Assert.True(failures.Count == 0, $"{failures.Count} removes failed; first: {failures.FirstOrDefault()}");
        Assert.Equal(new[] { ".lab" }, Directory.GetFileSystemEntries(m.Mount).Select(Path.GetFileName).ToArray());
        Assert.Empty(Directory.GetFileSystemEntries(m.Backing));

        int fds = Directory.GetFiles($"/proc/{m.Daemon.Id}/fd").Length;
        output.WriteLine($"served {Dirs * PerDir} files in {Dirs} directories under RLIMIT_NOFILE {Limit}; the daemon holds {fds} descriptors now");
        Assert.False(m.Daemon.HasExited);
        Assert.DoesNotContain("Too many open files", m.DaemonLog);
    }

    private static void Try(List<string> failures, Action a, string what)
    {
        try { a(); }
        catch (IOException e) { failures.Add($"{what}: {e.Message}"); }
        catch (UnauthorizedAccessException e) { failures.Add($"{what}: {e.Message}"); }
    }

    /// <summary>The mount lists exactly <paramref name="expected"/> (readdir of every directory complete)
    /// and each file reads back its own bytes.</summary>
    private static void Walk(LabMount m, SortedDictionary<string, string> expected)
    {
        var seen = Directory.EnumerateFiles(m.Mount, "*", SearchOption.AllDirectories)
            .Select(p => Path.GetRelativePath(m.Mount, p)).Where(p => !p.StartsWith(".lab/", StringComparison.Ordinal))
            .Order(StringComparer.Ordinal).ToList();
        Assert.Equal(expected.Keys.ToList(), seen);
        var wrong = expected.Where(kv => File.ReadAllText(m.M(kv.Key)) != kv.Value).Select(kv => kv.Key).ToList();
        Assert.True(wrong.Count == 0, $"{wrong.Count} files read other bytes; first: {wrong.FirstOrDefault()}");
    }
}
