using System.Text;
using Xunit;
using Xunit.Abstractions;

namespace Lab.Tests.Fusefs;

/// <summary>
/// A POSIX conformance battery in the manner of pjdfstest: each case is one line of calls (tests/progs/posixops.c
/// runs them, each as the identity it names, in a child that took it with setresuid), run once on the lab mount
/// and once in a plain directory of the backing file system; the two transcripts must be the same, line by line:
/// every result, every errno, every mode/owner/link count/size a stat shows, every mtime/ctime change.
/// Identities: R root, A uid 2001 gid 3001, B 2002/3002, C 2003/3003 and a member of 3001 (A's group).
/// </summary>
public class PosixBatteryTests
{
    private readonly ITestOutputHelper _out;
    public PosixBatteryTests(ITestOutputHelper output) => _out = output;

    private static string Root { get; } = FindRoot();
    private static string Helper => Path.Combine(Root, "build", "posixops");

    private static string FindRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "Lab.sln"))) return d.FullName;
        throw new InvalidOperationException("Lab.sln not found above " + AppContext.BaseDirectory);
    }

    private static readonly string[] Who = ["A", "C", "B", "R"]; // owner, group member, other, root

    private static readonly string[] FileModes =
        ["0000", "0100", "0200", "0400", "0010", "0020", "0040", "0001", "0002", "0004", "0600", "0640", "0604",
         "0660", "0606", "0666", "0700", "0070", "0007", "0755", "0777", "4777", "2777", "6777", "2767", "4666", "6745"];

    // Calls on a file f (mode M, owner A:3001, 4 bytes), each followed by a stat of what it did.
    private static readonly string[] FileOps =
        ["read f", "write f", "append f", "trunc f 1", "ftrunc f 9", "open f a", "open f wt", "utime f now",
         "utime f set", "chmod f 0600", "chown f -1 3001", "chown f 2002 -1", "setx f user.k v", "getx f user.k",
         "access f r", "access f w", "access f x", "lsx f"];

    private static readonly string[] DirModes =
        ["0000", "0100", "0200", "0300", "0400", "0500", "0600", "0700", "0010", "0030", "0050", "0070", "0001",
         "0003", "0005", "0007", "0755", "0777", "1777", "0730"];

    // Calls in a directory d (mode M, owner A:3001) holding x (0666, owner B), an empty directory e
    // (0777, owner B) and outside it a file o (0666, owner A).
    private static readonly string[] DirOps =
        ["ls d", "cd d", "stat d/x", "read d/x", "open d/n wc", "open d/x wt", "unlink d/x", "rename d/x d/y",
         "rename d/x o", "rename o d/y", "mkdir d/s 0755", "rmdir d/e", "link o d/l", "symlink t d/s",
         "mknod d/p p 0644", "access d x", "access d w", "chmod d 0777", "utime d now"];

    /// <summary>Permissions and ownership: every file call, by every identity, on every mode.</summary>
    public static IEnumerable<string> FileMatrix() =>
        from mode in FileModes from who in Who from op in FileOps
        select $"mk f {mode} A; @{who} {op}; stat f";

    /// <summary>Search, write and list permission of directories, sticky ones included.</summary>
    public static IEnumerable<string> DirMatrix() =>
        from mode in DirModes from who in Who from op in DirOps
        select $"md d 0777 A; mk d/x 0666 B; md d/e 0777 B; mk o 0666 A; chmod d {mode}; @{who} {op}; stat d/x; lstat d/y; stat d; lstat d/s; stat o";

    /// <summary>Sticky directories: who may remove or rename whose entries.</summary>
    public static IEnumerable<string> StickyMatrix() =>
        from dirOwner in new[] { "A", "B", "R" } from fileOwner in new[] { "A", "B", "C", "R" } from who in Who
        from op in new[] { "unlink s/x", "rename s/x s/y", "rename s/z s/x", "rmdir s/e", "rename s/e s/f", "link s/x s/h" }
        select $"md s 1777 {dirOwner}; mk s/x 0666 {fileOwner}; mk s/z 0666 {who}; md s/e 0777 {fileOwner}; @{who} {op}; lstat s/x; lstat s/y; lstat s/e";

    /// <summary>SUID/SGID rules, ACLs, device nodes and the errno of each call, one case a line.</summary>
    public static readonly string[] Rules =
    [
        // A write or truncate by a writer without CAP_FSETID clears S_ISUID, and S_ISGID with group execute.
        "mk f 4777 A; @B write f; stat f",
        "mk f 4777 A; @A write f; stat f",
        "mk f 4777 A; @R write f; stat f",
        "mk f 2777 A; @B write f; stat f",
        "mk f 2767 A; @B write f; stat f",
        "mk f 6777 A; @C append f; stat f",
        "mk f 6777 A; @B trunc f 0; stat f",
        "mk f 6777 A; @B ftrunc f 2; stat f",
        "mk f 6777 A; @B open f wt; stat f",
        "mk f 6777 A; @R trunc f 0; stat f",
        "mk f 4777 A; @B open f w; stat f",
        "mk f 6755 A; @A ftrunc f 100; stat f",
        "mk f 2757 A; @B append f; stat f",
        "mk f 2767 A; @C write f; stat f",
        "mk f 2767 A; @A write f; stat f",
        "mk f 2767 A; @B trunc f 0; stat f",
        "mk f 2767 A; @C trunc f 0; stat f",
        "mk f 2767 A; @B open f wt; stat f",
        "mk f 6767 A; @B ftrunc f 1; stat f",
        "mk f 6745 A; @A chown f -1 3001; stat f",
        "mk f 2745 A; chown f 2001 3002; @A chown f -1 3002; stat f",
        "mk f 6745 A; chown f 2002 3002; stat f",
        "mk f 2745 A; @C ftrunc f 1; stat f",
        "mk f 2745 A; @A trunc f 1; stat f",
        // chown clears them (root too); chmod of S_ISGID by an owner outside the group drops it.
        "mk f 6755 A; chown f 2002 -1; stat f",
        "mk f 6755 A; @A chown f -1 3001; stat f",
        "mk f 6745 A; chown f -1 3002; stat f",
        "md d 6755 A; chown d 2002 3002; stat d",
        "mk f 0755 A; chown f 2001 3002; @A chmod f 2755; stat f",
        "mk f 0755 A; @A chmod f 2755; stat f",
        "mk f 0755 A; @C chmod f 4755; stat f",
        "mk f 0755 A; @A chmod f 4755; stat f",
        "mk f 0755 A; @A chmod f 1755; stat f",
        "md d 0755 A; chown d 2001 3002; @A chmod d 2755; stat d",
        // Set-group-ID directories pass their group on, and S_ISGID to subdirectories.
        "md g 2777 A; @B open g/f wc 0644; stat g/f",
        "md g 2777 A; @B mkdir g/d 0755; stat g/d",
        "md g 2777 A; @B open g/f wc 2755; stat g/f",
        "md g 2777 A; @C open g/f wc 2755; stat g/f",
        "md g 2777 A; @B mknod g/p p 0644; stat g/p",
        "md g 2777 A; @B symlink t g/l; lstat g/l",
        "md g 0777 A; @B open g/f wc 4755; stat g/f",
        "md g 0777 A; @B open g/f wc 2755; stat g/f",
        "md g 0777 A; @B mkdir g/d 3777; stat g/d",
        // The caller's umask narrows a new node's mode, unless the parent has a default ACL.
        "umask 022; @A open f wc 0666; @A mkdir d 0777; @A mknod p p 0666; stat f; stat d; stat p",
        "umask 077; @B open f wc 4777; @B mkdir d 1777; stat f; stat d",
        "md d 0777 A; dacl d u::rwx,g::rwx,o::rx; umask 077; @A open d/f wc 0666; @A mkdir d/s 0777; stat d/f; stat d/s",
        "md d 0777 A; dacl d u::rwx,g::rwx,o::rx; @A open d/f wc 4766; stat d/f",
        "md d 2777 A; dacl d u::rwx,g::rwx,o::rx; @C mkdir d/s 0750; stat d/s",
        // POSIX ACLs: the kernel checks them with the mode.
        "mk f 0644 A; acl f u::rw,u:2002:rw,g::r,m::rw,o::r; stat f; @B append f; @B read f",
        "mk f 0644 A; acl f u::rw,u:2002:rw,g::r,m::r,o::r; @B append f; @B read f",
        "mk f 0644 A; acl f u::rw,g::r,g:3002:rw,m::rw,o::-; @B append f; @C read f",
        "mk f 0644 A; acl f u::rw,u:2003:-,g::rw,m::rw,o::r; @C read f; @C append f",
        "mk f 0644 A; acl f u::rw,u:2002:rw,g::r,m::rw,o::r; chmod f 0604; @B append f; stat f",
        "mk f 0644 A; acl f u::rw,u:2002:rw,g::r,m::rw,o::r; rmx f system.posix_acl_access; @B append f; stat f",
        "mk f 0644 A; @A acl f u::rw,u:2002:rw,g::r,m::rw,o::r; @B append f; stat f",
        "mk f 0644 A; @B acl f u::rw,u:2002:rw,g::r,m::rw,o::r; @B append f",
        "md d 0755 A; acl d u::rwx,u:2002:rwx,g::rx,m::rwx,o::rx; @B open d/n wc; @B unlink d/n",
        "md d 0755 A; acl d u::rwx,u:2002:-,g::rx,m::rwx,o::rx; @B ls d; @B cd d",
        "md d 0777 A; dacl d u::rwx,u:2002:rw,g::rx,m::rwx,o::-; @A open d/n wc 0666; stat d/n; @B append d/n; getx d/n system.posix_acl_access",
        "md d 0777 A; dacl d u::rwx,g::rx,m::rx,o::-; @A mkdir d/s 0777; stat d/s; getx d/s system.posix_acl_default",
        "md d 0777 A; dacl d u::rwx,g::rx,o::-; @A open d/n wc 0666; stat d/n",
        "mk f 0644 A; acl f u::rw,u:2002:rw,g::r,m::rw,o::r; getx f system.posix_acl_access; lsx f",
        // Device nodes: made by root only, with their numbers.
        "mknod c c 0644 1 3; stat c",
        "mknod b b 0600 7 0; stat b",
        "mknod c c 0644 300 70000; stat c",
        "@A mknod c c 0644 1 3",
        "@A mknod b b 0644 7 0",
        "mknod p p 0640; stat p",
        "mknod s s 0640; stat s",
        "mknod f f 0640; stat f",
        "mknod c c 0644 1 3; mknod c c 0644 1 3",
        "mknod c c 0644 1 3; chown c 2001 3001; chmod c 0600; stat c; link c d; stat d; rename d e; unlink c; stat e",
        // The errno each call can give.
        "open missing r", "open missing w", "stat missing", "lstat missing", "unlink missing", "rmdir missing",
        "rename missing x", "link missing x", "chmod missing 0644", "chown missing 1 1", "readlink missing",
        "utime missing now", "trunc missing 0", "mkdir missing/x 0755", "access missing f", "getx missing user.x",
        "mk f 0644 A; stat f/x", "mk f 0644 A; mkdir f/x 0755", "mk f 0644 A; rmdir f", "mk f 0644 A; open f rd",
        "mk f 0644 A; open f/ r", "mk f 0644 A; open f/x wc", "mk f 0644 A; rename f f/x", "mk f 0644 A; ls f",
        "md d 0755 R; open d w", "md d 0755 R; open d a", "md d 0755 R; unlink d", "md d 0755 R; trunc d 0",
        "md d 0755 R; mk f 0644 R; rename f d", "md d 0755 R; mk f 0644 R; rename d f",
        "md d 0755 R; md d/x 0755 R; rmdir d", "md d 0755 R; md e 0755 R; mk e/x 0644 R; rename d e",
        "md d 0755 R; md e 0755 R; rename d e; stat e", "md d 0755 R; rename d d/x", "md d 0755 R; md d/s 0755 R; rename d d/s/x",
        "md d 0755 R; mkdir d 0755", "mk f 0644 R; open f cx", "mk f 0644 R; open f c; stat f", "mk f 0644 R; link f f",
        "mk f 0644 R; symlink x f", "mk f 0644 R; mknod f p 0644", "mk f 0644 R; mkdir f 0755",
        "md d 0755 R; link d e", "md d 0755 R; rmdir d/.", "md d 0755 R; rmdir d/..", "md d 0755 R; rename d/. e",
        "symlink l l; open l r", "symlink l l; stat l", "symlink l l; lstat l", "symlink f l; open l rn",
        "mk f 0644 R; symlink f l; open l rn", "mk f 0644 R; symlink f l; open l wc; stat f",
        "symlink nowhere l; open l wc 0600; stat nowhere", "symlink nowhere l; open l wcx 0600",
        "mk f 0644 R; symlink f l; readlink l; readlink f", "mk f 0644 R; symlink f l; lchown l 2001 3001; lstat l; stat f",
        "mk f 0644 R; symlink f l; chmod l 0600; stat f", "mk f 0644 R; symlink f l; setx l user.x v",
        "md d 0755 R; symlink d l; rmdir l", "md d 0755 R; symlink d l; unlink l; stat d",
        "mk f 0644 R; getx f user.none", "mk f 0644 R; rmx f user.none", "mk f 0644 R; setx f bogus.x v",
        "mk f 0644 R; setx f user.x v; getx f user.x; lsx f; rmx f user.x; lsx f",
        "open nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn wc",
        "mkdir nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn 0755",
        "mk f 0644 R; chown f 2001 3001; @A chown f 2002 -1; @A chown f -1 3002; @C chown f -1 3003; @A chown f -1 3001; stat f",
        "mk f 0644 A; @A chown f 2001 3001; stat f", "mk f 0644 A; @B chmod f 0777", "mk f 0644 A; @B utime f set",
        "mk f 0666 A; @B utime f now; @B utime f set", "mk f 0644 A; @B setx f user.x v", "mk f 0666 A; @B setx f user.x v",
        "mk f 0644 A; @B setx f trusted.x v", "mk f 0644 A; setx f trusted.x v; getx f trusted.x; @A getx f trusted.x",
        "mk f 0644 A; link f g; stat f; unlink f; stat g; unlink g; stat g",
        "mk f 0644 A; md d 0755 A; rename f d/f; stat d/f; rename d/f f; stat f",
        "md a 0755 A; md b 0755 A; md a/x 0755 A; @A rename a/x b/x; stat b/x; @A rename b/x a/x",
        "md a 0755 A; md b 0555 A; md a/x 0755 A; @A rename a/x b/x",
        "md a 0755 A; md a/x 0555 A; md b 0755 A; @A rename a/x b/x; stat b/x",
        "md a 0755 A; md a/x 0555 A; md b 0755 A; @B rename a/x b/x",
    ];

    /// <summary>Which of mtime and ctime each call changes, on what it touches.</summary>
    public static readonly string[] Times =
    [
        "mk f 0666 A; times f; @A write f; changed f", "mk f 0666 A; times f; @A append f; changed f",
        "mk f 0666 A; times f; @A trunc f 9; changed f", "mk f 0666 A; times f; @A trunc f 4; changed f",
        "mk f 0666 A; times f; @A ftrunc f 4; changed f", "mk f 0666 A; times f; @A open f wt; changed f",
        "mk f 0666 A; times f; @A open f r; changed f", "mk f 0666 A; times f; @A read f; changed f",
        "mk f 0666 A; times f; @A chmod f 0644; changed f", "mk f 0666 A; times f; @A chown f -1 3001; changed f",
        "mk f 0666 A; times f; chown f 2002 3002; changed f", "mk f 0666 A; times f; @A utime f now; changed f",
        "mk f 0666 A; times f; @A utime f set; changed f", "mk f 0666 A; times f; @A setx f user.x v; changed f",
        "mk f 0666 A; setx f user.x v; times f; @A rmx f user.x; changed f", "mk f 0666 A; times f; @A getx f user.x; changed f",
        "mk f 0666 A; times f; acl f u::rw,u:2002:r,g::rw,m::rw,o::rw; changed f",
        "mk f 0666 A; times .; times f; @A link f g; changed f; changed .", "mk f 0666 A; link f g; times .; times g; @A unlink f; changed g; changed .",
        "mk f 0666 A; md d 0777 A; times .; times d; times f; @A rename f d/f; changed .; changed d; changed d/f",
        "mk f 0666 A; times .; times f; @A rename f g; changed .; changed g",
        "mk f 0666 A; mk g 0666 A; times .; times f; @A rename f g; changed .; changed g",
        "md d 0777 A; md e 0777 A; times d; times e; @A rename d e/d; changed e/d; changed e",
        "times .; @A mkdir d 0755; changed .", "md d 0777 A; times .; @A rmdir d; changed .",
        "times .; @A symlink t l; changed .", "times .; @A mknod p p 0644; changed .", "times .; mknod c c 0644 1 3; changed .",
        "times .; @A open f wc; changed .", "mk f 0666 A; times .; @A open f wc; changed .",
        "mk f 0666 A; times .; times f; @A open f wct; changed .; changed f",
        "md d 0777 A; times d; @A ls d; changed d", "md d 0777 A; mk d/x 0666 A; times d; @A unlink d/x; changed d",
        "md d 0777 A; times d; @A chmod d 0700; changed d", "md d 0777 A; times d; @A utime d set; changed d",
        "mk f 4777 A; times f; @B write f; changed f", "mk f 0777 A; times f; @B write f; changed f",
    ];

    private sealed record Outcome(int Cases, int Lines, List<string> Diffs, SortedSet<string> Ops);

    /// <summary>Runs <paramref name="cases"/> on a fresh mount and in a directory next to its backing
    /// directory; returns the cases whose transcripts differ.</summary>
    private Outcome Run(IEnumerable<string> cases, string group)
    {
        Assert.True(File.Exists(Helper), $"{Helper} is missing: make build");
        var list = cases.ToList();
        Assert.Equal(list.Count, list.Distinct().Count()); // each case once
        var script = new StringBuilder();
        var ops = new SortedSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < list.Count; i++)
        {
            script.Append("case c").Append(i).Append('\n');
            foreach (var step in list[i].Split(';', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
            {
                script.Append(step).Append('\n');
                var words = step.Split(' ');
                ops.Add(words[0].StartsWith('@') ? words[1] : words[0]);
            }
        }
        using var m = new TestMount();
        var native = Path.Combine(m.Root, "native");
        Directory.CreateDirectory(native);
        // The identities must reach both: the test's temp dirs are 0755 at most, never narrower.
        foreach (var d in new[] { m.Root, native, m.Backing }) Assert.Equal(0, Mono.Unix.Native.Syscall.chmod(d, (Mono.Unix.Native.FilePermissions)0x1ED));
        string RunIn(string dir)
        {
            var psi = new System.Diagnostics.ProcessStartInfo(Helper) { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
            psi.ArgumentList.Add(dir);
            using var p = System.Diagnostics.Process.Start(psi)!;
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            p.StandardInput.Write(script.ToString());
            p.StandardInput.Close();
            if (!p.WaitForExit(900_000)) { p.Kill(); throw new TimeoutException($"posixops in {dir} did not finish"); }
            p.WaitForExit();
            Assert.True(p.ExitCode == 0, $"posixops in {dir} exited {p.ExitCode}: {stderr.Result}");
            return stdout.Result;
        }
        var want = Split(RunIn(native));
        var got = Split(RunIn(m.MountPoint));
        Assert.Equal(list.Count, want.Count);
        Assert.Equal(list.Count, got.Count);
        var diffs = new List<string>();
        int lines = 0;
        for (int i = 0; i < list.Count; i++)
        {
            lines += want[i].Count(c => c == '\n');
            if (want[i] != got[i])
                diffs.Add($"case `{list[i]}`\n  backing dir:\n{Indent(want[i])}  lab mount:\n{Indent(got[i])}");
        }
        _out.WriteLine($"{group}: {list.Count} cases, {lines} calls compared, operations: {string.Join(' ', ops)}; {diffs.Count} differ");
        return new Outcome(list.Count, lines, diffs, ops);
    }

    private static string Indent(string s) => string.Concat(s.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => "    " + l + "\n"));

    // The transcript of each case, without its "== cN" line.
    private static List<string> Split(string transcript)
    {
        var cases = new List<string>();
        StringBuilder? cur = null;
        foreach (var line in transcript.Split('\n'))
        {
            if (line.StartsWith("== ", StringComparison.Ordinal))
            {
                if (cur != null) cases.Add(cur.ToString());
                cur = new StringBuilder();
            }
            else if (line.Length > 0) cur?.Append(line).Append('\n');
        }
        if (cur != null) cases.Add(cur.ToString());
        return cases;
    }

    private static void AssertSame(Outcome o) =>
        Assert.True(o.Diffs.Count == 0, $"{o.Diffs.Count} of {o.Cases} cases differ from the backing directory:\n"
                                         + string.Join("\n", o.Diffs.Take(25)));

    [KernelFact]
    public void File_permissions_and_ownership_match_the_backing_file_system() => AssertSame(Run(FileMatrix(), "files"));

    [KernelFact]
    public void Directory_permissions_match_the_backing_file_system() => AssertSame(Run(DirMatrix(), "directories"));

    [KernelFact]
    public void Sticky_directories_match_the_backing_file_system() => AssertSame(Run(StickyMatrix(), "sticky"));

    [KernelFact]
    public void Suid_sgid_acl_device_and_errno_rules_match_the_backing_file_system() => AssertSame(Run(Rules, "rules"));

    [KernelFact]
    public void Mtime_and_ctime_updates_match_the_backing_file_system() => AssertSame(Run(Times, "times"));
}
