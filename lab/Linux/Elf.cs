using System.Buffers.Binary;

namespace Lab.Linux;

/// <summary>
/// Just enough ELF to tell whether a program can be run under the lab: the shim enters a
/// program through the dynamic loader (LD_PRELOAD), and a statically linked program (no
/// PT_INTERP program header, static-pie included) never runs it.
/// </summary>
public static class Elf
{
    const uint PT_INTERP = 3;

    /// <summary>True: an ELF file without PT_INTERP. False: a dynamically linked ELF file.
    /// Null: not an ELF file (a script, say) or unreadable.</summary>
    public static bool? IsStatic(Stream s)
    {
        Span<byte> eh = stackalloc byte[64];
        if (ReadAt(s, 0, eh) < 52 || eh[0] != 0x7f || eh[1] != (byte)'E' || eh[2] != (byte)'L' || eh[3] != (byte)'F')
            return null;
        bool is64 = eh[4] == 2;
        if (eh[5] != 1) return null;   // little-endian only (x86-64, like the rest of the lab)
        ulong phoff = is64 ? BinaryPrimitives.ReadUInt64LittleEndian(eh[32..]) : BinaryPrimitives.ReadUInt32LittleEndian(eh[28..]);
        int phentsize = BinaryPrimitives.ReadUInt16LittleEndian(eh[(is64 ? 54 : 42)..]);
        int phnum = BinaryPrimitives.ReadUInt16LittleEndian(eh[(is64 ? 56 : 44)..]);
        if (phentsize < 4 || phnum == 0 || phnum > 4096 || phoff > (ulong)long.MaxValue) return null;
        Span<byte> ph = stackalloc byte[4];
        for (int i = 0; i < phnum; i++)
        {
            if (ReadAt(s, (long)phoff + (long)i * phentsize, ph) < 4) return null;
            if (BinaryPrimitives.ReadUInt32LittleEndian(ph) == PT_INTERP) return false;
        }
        return true;
    }

    public static bool? IsStatic(string path)
    {
        try
        {
            using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1, FileOptions.None);
            return IsStatic(f);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
    }

    /// <summary>The interpreter of a "#!" script (its first word), or null.</summary>
    public static string? ScriptInterpreter(string path)
    {
        try
        {
            using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1, FileOptions.None);
            Span<byte> b = stackalloc byte[256];
            int n = ReadAt(f, 0, b);
            if (n < 3 || b[0] != (byte)'#' || b[1] != (byte)'!') return null;
            var line = System.Text.Encoding.UTF8.GetString(b[2..n]).Split('\n')[0].Trim();
            var word = line.Split(' ', '\t')[0];
            return word.Length > 0 ? word : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
    }

    static int ReadAt(Stream s, long off, Span<byte> buf)
    {
        s.Position = off;
        int got = 0;
        while (got < buf.Length)
        {
            int n = s.Read(buf[got..]);
            if (n == 0) break;
            got += n;
        }
        return got;
    }
}
