using System.Text.RegularExpressions;

namespace Lab.Tests;

/// <summary>
/// The docs name only paths that exist. Scanned: every tracked <c>*.md</c> file and
/// <c>lab/preload/labproto.h</c>. A repository path is a token that
/// <list type="bullet">
/// <item>starts with a top-level folder of the repository (one that holds tracked files:
/// <c>lab</c>, <c>tests</c>, <c>.ci</c>…) and is relative to the root, or starts with a folder
/// beside the doc (<c>Uvm/Amap.cs</c> in <c>lab/Vm/README.md</c>) and is relative to the doc's
/// folder; optionally after <c>./</c>, and followed by <c>/</c>;</item>
/// <item>is not preceded by a letter, digit, <c>_ . - /</c> (so <c>/run/lab/x</c>, a URL or
/// <c>M/.lab/stats</c> are not repository paths);</item>
/// <item>runs over letters, digits and <c>_ . - /</c>, and ends at a letter, digit or <c>_</c>
/// (a full stop, comma or closing bracket after it is prose).</item>
/// </list>
/// It names a file or a folder, relative to the repository root. Where the token goes on with a
/// wildcard or placeholder (<c>* ? { &lt; [ …</c>), only the folder before it is checked. A path
/// with a <c>bin</c> or <c>obj</c> segment is a build product (ignored by git) and is not checked.
/// </summary>
public sealed class DocPathsTests
{
    static readonly char[] Wild = ['*', '?', '{', '<', '[', '…'];

    /// <summary>A token that starts with one of <paramref name="folders"/> (see the class comment for the rule).</summary>
    public static Regex PathToken(IEnumerable<string> folders)
    {
        var alt = string.Join("|", folders.OrderByDescending(f => f.Length).Select(Regex.Escape));
        return new Regex(@"(?<![\w./-])(?:\./)?(?<p>(?:" + alt + @")/(?:[\w.\-/]*\w)?)(?<rest>[^\s`'""()]*)");
    }

    /// <summary>The repository paths one line names.</summary>
    public static IEnumerable<string> PathsIn(string line, Regex pathToken)
    {
        foreach (Match m in pathToken.Matches(line))
        {
            string raw = m.Groups["p"].Value, rest = m.Groups["rest"].Value;
            // A wildcard right after the match (tests/progs/x*.c, lab/x{a,b}): the folder before the name.
            if (rest.IndexOfAny(Wild) == 0 && !raw.EndsWith('/')) raw = raw[..(raw.LastIndexOf('/') + 1)];
            string p = raw.TrimEnd('/');
            if (p.Split('/').Any(s => s is "bin" or "obj")) continue;
            yield return p;
        }
    }

    [Fact]
    public void TheRule_FindsRepositoryPaths_AndOnlyThose()
    {
        var top = PathToken(["lab", "tests", ".ci"]);
        string Paths(string line) => string.Join(" | ", PathsIn(line, top));
        Assert.Equal("lab/Vm/AddressSpace.cs", Paths("see `lab/Vm/AddressSpace.cs`."));
        Assert.Equal("lab/Cli.cs | tests/progs/x.c", Paths("./lab/Cli.cs and (tests/progs/x.c), /run/lab/mount-1.log"));
        Assert.Equal("tests/progs | lab/preload | tests", Paths("every tests/progs/*.c; lab/preload/x*.h, tests/*"));
        Assert.Equal(".ci/run", Paths("CI runs .ci/run, not M/.lab/stats or https://x.org/lab/y"));
        Assert.Equal("lab/scripts", Paths("lab/scripts/, lab/bin/Release/net10.0/lab, blab/x, lab-x/y"));
        Assert.Equal("lab/Vm/AddressSpace.cs", Paths("lab/Vm/AddressSpace.cs:134~318"));
    }

    [Fact]
    public void EveryRepositoryPathNamedInTheDocsExists()
    {
        string root = Repo.Root;
        var tracked = TrackedFiles(root);
        var topToken = PathToken(FoldersIn(tracked, ""));
        var docs = tracked.Where(f => f.EndsWith(".md", StringComparison.Ordinal) || f == "lab/preload/labproto.h")
            .Where(f => File.Exists(Path.Combine(root, f))) // tracked, but deleted in this working tree
            .Order(StringComparer.Ordinal).ToList();
        // Not vacuous: the README and the protocol header are scanned, and they name paths.
        Assert.Contains("README.md", docs);
        Assert.Contains("lab/preload/labproto.h", docs);

        var missing = new List<string>();
        int named = 0;
        foreach (var doc in docs)
        {
            var lines = File.ReadAllLines(Path.Combine(root, doc));
            string dir = Path.GetDirectoryName(doc) ?? "";
            // Root-relative paths; and, for a doc in a folder, paths relative to that folder.
            var passes = new List<(string Base, Regex Token)> { ("", topToken) };
            if (dir != "" && FoldersIn(tracked, dir) is { Count: > 0 } beside) passes.Add((dir, PathToken(beside)));
            foreach (var (dirBase, token) in passes)
            {
                for (int i = 0; i < lines.Length; i++)
                    foreach (var p in PathsIn(lines[i], token))
                    {
                        named++;
                        string rel = dirBase == "" ? p : dirBase + "/" + p;
                        string full = Path.Combine(root, rel);
                        if (!File.Exists(full) && !Directory.Exists(full)) missing.Add($"{doc}:{i + 1}: {rel}");
                    }
            }
        }
        Assert.True(missing.Count == 0,
            $"{missing.Count} repository path(s) named in the docs do not exist:\n" + string.Join("\n", missing));
        Assert.True(named >= 20, $"only {named} repository paths found in {docs.Count} files: is the rule still matching?");
    }

    /// <summary>The folders directly in <paramref name="dir"/> ("" = the root) that hold tracked files.</summary>
    static HashSet<string> FoldersIn(List<string> tracked, string dir)
    {
        string prefix = dir == "" ? "" : dir + "/";
        return tracked.Where(f => f.StartsWith(prefix, StringComparison.Ordinal) && f.IndexOf('/', prefix.Length) > 0)
            .Select(f => f[prefix.Length..f.IndexOf('/', prefix.Length)])
            .Where(f => f is not ("bin" or "obj"))
            .ToHashSet();
    }

    /// <summary>
    /// The files git tracks (the docs a clone has); without git or a repository (a copied
    /// tree), every file outside .git, build products and test results.
    /// </summary>
    static List<string> TrackedFiles(string root)
    {
        // safe.directory: a checkout owned by another user than the one running the tests.
        try
        {
            var git = Sh.Run("git", ["-c", "safe.directory=*", "-C", root, "ls-files", "-z"]);
            if (git.ExitCode == 0 && git.Stdout.Length > 0)
                return git.Stdout.Split('\0', StringSplitOptions.RemoveEmptyEntries).ToList();
        }
        catch (System.ComponentModel.Win32Exception) { } // no git on this machine
        string[] skip = ["bin", "obj", "build", "out", "TestResults", ".git"];
        return Directory.EnumerateFiles(root, "*", SearchOption.AllDirectories)
            .Select(f => Path.GetRelativePath(root, f))
            .Where(f => !f.Split('/').Any(s => skip.Contains(s)))
            .ToList();
    }
}
